//! berth-metrics: berth's Prometheus metric families and their text exposition.
//!
//! Knows nothing of the engine: the agent records into it, and the metrics issue adds the
//! resource families and the `/metrics` endpoint.
#![forbid(unsafe_code)]

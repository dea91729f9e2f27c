//! berthd's parts, as a library for the daemon's binary and for what drives them from
//! outside (the fuzz targets: the config file, the streaming protocols' framing).
#![forbid(unsafe_code)]

pub mod config;
pub mod http_guard;
pub mod metrics_http;
pub mod server;
pub mod shutdown;
pub mod streaming;
pub mod telemetry;

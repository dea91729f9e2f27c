//! The tower layer around every RPC: a span with the method, its duration and status code,
//! one log line per call (debug on success, warn on failure), and the request counter and
//! latency histogram of the metrics endpoint.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use berth_metrics::Metrics;
use tower::{Layer, Service};
use tracing::Instrument;

#[derive(Debug, Clone)]
pub struct RpcLayer {
    pub metrics: Arc<Metrics>,
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<http::Request<B>> for RpcService<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = rpc_name(req.uri().path()).to_owned();
        // Only CRI paths name a metric series, so that junk paths cannot grow the registry.
        let series = if req.uri().path().starts_with("/runtime.v1.") {
            method.clone()
        } else {
            "unknown".to_owned()
        };
        let metrics = self.metrics.clone();
        let span = tracing::info_span!(
            "rpc",
            method = %method,
            code = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let start = Instant::now();
        let fut = {
            let _enter = span.enter();
            self.inner.call(req)
        };
        Box::pin(
            async move {
                let res = fut.await;
                let ms = start.elapsed().as_secs_f64() * 1e3;
                let span = tracing::Span::current();
                span.record("duration_ms", ms);
                match &res {
                    Ok(resp) => {
                        let (code, message) = grpc_outcome(resp.headers());
                        span.record("code", code.as_str());
                        metrics
                            .cri_requests
                            .with_label_values(&[series.as_str(), code.as_str()])
                            .inc();
                        metrics
                            .cri_request_duration
                            .with_label_values(&[series.as_str()])
                            .observe(start.elapsed().as_secs_f64());
                        if code == "OK" {
                            tracing::debug!("rpc done");
                        } else {
                            tracing::warn!(message = %message, "rpc failed");
                        }
                    }
                    Err(e) => {
                        span.record("code", "transport");
                        tracing::warn!(error = %e, "rpc transport error");
                    }
                }
                res
            }
            .instrument(span),
        )
    }
}

/// `/runtime.v1.RuntimeService/Version` -> `Version`.
fn rpc_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The gRPC status of a response whose status travels in its headers (a trailers-only
/// error response); "OK" when there is none there, as a successful unary call carries it in
/// the trailers.
fn grpc_outcome(headers: &http::HeaderMap) -> (String, String) {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
        .unwrap_or(tonic::Code::Ok);
    let message = headers
        .get("grpc-message")
        .map(|v| percent_decode(v.as_bytes()))
        .unwrap_or_default();
    let name = match code {
        tonic::Code::Ok => "OK".to_owned(),
        other => format!("{other:?}"),
    };
    (name, message)
}

fn percent_decode(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).filter(|_| b[i] == b'%');
        if let Some(v) = hex.and_then(|h| u8::from_str_radix(&String::from_utf8_lossy(h), 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_outcomes() {
        assert_eq!(rpc_name("/runtime.v1.RuntimeService/Version"), "Version");
        let mut h = http::HeaderMap::new();
        assert_eq!(grpc_outcome(&h).0, "OK");
        h.insert("grpc-status", "5".parse().unwrap());
        h.insert("grpc-message", "pod%20x%3A not found".parse().unwrap());
        let (c, m) = grpc_outcome(&h);
        assert_eq!(c, "NotFound");
        assert_eq!(m, "pod x: not found");
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(percent_decode(b"%4"), "%4");
    }
}

//! The Prometheus endpoint: `GET /metrics` in the text exposition format (0.0.4), on the
//! address from `[metrics] listen`. Each scrape reads the engine's figures on a blocking
//! thread; everything else gets 404 (405 for other methods on /metrics).

use std::convert::Infallible;
use std::sync::Arc;

use berth_engine::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(
    engine: Arc<Engine>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/metrics" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: berthd serves /metrics\n".into(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n".into(),
        ));
    }
    let rendered = tokio::task::spawn_blocking(move || {
        let snapshot = engine.metrics_snapshot().map_err(|e| e.to_string())?;
        engine
            .metrics()
            .render(&snapshot)
            .map_err(|e| e.to_string())
    })
    .await;
    Ok(match rendered {
        Ok(Ok(text)) => reply(StatusCode::OK, CONTENT_TYPE, text),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics scrape failed");
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{e}\n"),
            )
        }
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("scrape task: {e}\n"),
        ),
    })
}

/// Limits of the metrics listener: a scrape is one short request; a few scrapers at once.
pub const LIMITS: crate::http_guard::Limits = crate::http_guard::Limits {
    max_connections: 64,
    header_timeout: std::time::Duration::from_secs(10),
    connection_timeout: std::time::Duration::from_secs(120),
};

/// Serves scrapes until the task is dropped.
pub async fn serve(listener: TcpListener, engine: Arc<Engine>) {
    let counters = Arc::new(crate::http_guard::Counters::default());
    crate::http_guard::accept_loop(
        listener,
        "metrics",
        LIMITS,
        counters,
        move |stream, peer| {
            let engine = engine.clone();
            let builder = crate::http_guard::http1_builder(&LIMITS);
            async move {
                let service = service_fn(move |req| handle(engine.clone(), req));
                if let Err(e) = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "metrics connection ended");
                }
            }
        },
    )
    .await;
}

//! berth's streaming server: where the URLs that CRI Exec, Attach and PortForward return
//! lead. kubelet (proxying kubectl) or crictl opens the URL and upgrades the connection to
//! SPDY/3.1 or WebSocket; the token in the path names the request it was issued for, once.
//!
//! - [`cache`]: the single-use tokens;
//! - [`idle`]: the idle timeout of streaming connections;
//! - [`remotecommand`]: exec and attach, apart from the transport;
//! - [`ws`]: the WebSocket transports;
//! - [`httpstream`]: the SPDY/3.1 transports (on the `berth-spdy` crate).

pub mod cache;
pub mod httpstream;
pub mod idle;
pub mod remotecommand;
pub mod ws;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_engine::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use cache::{CacheError, StreamRequest, TokenCache};

/// Requests waiting for their client at most (as kubelet's streaming server).
const MAX_IN_FLIGHT: usize = 1000;

/// The streaming server's state: where it listens and the pending requests.
#[derive(Debug)]
pub struct Streaming {
    base: String,
    cache: TokenCache,
    /// A connection idle this long is closed (None: never).
    idle_timeout: Option<Duration>,
}

impl Streaming {
    /// Binds `listen` (port 0: any free port) and serves in the background. The URLs handed
    /// out name the bound address (the loopback one when listening on all addresses).
    pub async fn start(
        listen: SocketAddr,
        token_ttl: Duration,
        idle_timeout: Option<Duration>,
        engine: Arc<Engine>,
    ) -> std::io::Result<(Arc<Streaming>, tokio::task::JoinHandle<()>)> {
        let listener = TcpListener::bind(listen).await?;
        let mut addr = listener.local_addr()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let state = Arc::new(Streaming {
            base: format!("http://{addr}"),
            cache: TokenCache::new(token_ttl, MAX_IN_FLIGHT),
            idle_timeout,
        });
        let task = tokio::spawn(serve(listener, state.clone(), engine));
        Ok((state, task))
    }

    /// A URL for `req`, valid once and for the token's lifetime.
    pub fn url(&self, req: StreamRequest) -> Result<String, CacheError> {
        let kind = req.kind();
        let token = self.cache.insert(req)?;
        Ok(format!("{}/{kind}/{token}", self.base))
    }

    /// Where the server listens, e.g. `http://127.0.0.1:41234`.
    pub fn base(&self) -> &str {
        &self.base
    }
}

/// Limits of the streaming listener, before a connection is upgraded to a stream (the
/// stream has its own idle timeout): kubelet and crictl connect and upgrade at once.
pub const LIMITS: crate::http_guard::Limits = crate::http_guard::Limits {
    max_connections: 512,
    header_timeout: Duration::from_secs(10),
    connection_timeout: Duration::from_secs(60),
};

async fn serve(listener: TcpListener, state: Arc<Streaming>, engine: Arc<Engine>) {
    let counters = Arc::new(crate::http_guard::Counters::default());
    crate::http_guard::accept_loop(
        listener,
        "streaming",
        LIMITS,
        counters,
        move |stream, peer| {
            let _ = stream.set_nodelay(true);
            let (state, engine) = (state.clone(), engine.clone());
            let builder = crate::http_guard::http1_builder(&LIMITS);
            async move {
                let svc = service_fn(move |req| {
                    let (state, engine) = (state.clone(), engine.clone());
                    async move { Ok::<_, Infallible>(handle(&state, engine, req)) }
                });
                if let Err(e) = builder
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await
                {
                    tracing::debug!(%peer, error = %e, "streaming connection ended");
                }
            }
        },
    )
    .await;
}

/// The protocols a client offers in header `name`, in its order (repeated headers and
/// comma-separated lists alike).
pub(crate) fn offered_protocols(req: &Request<Incoming>, name: http::HeaderName) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// An upgraded connection, failing after `idle` without traffic when set.
pub(crate) type Upgraded = idle::IdleTimeout<TokioIo<hyper::upgrade::Upgraded>>;

pub(crate) fn upgraded(u: hyper::upgrade::Upgraded, idle: Option<Duration>) -> Upgraded {
    idle::IdleTimeout::new(TokioIo::new(u), idle)
}

/// The 101 answer to an upgrade to `upgrade`, naming the negotiated protocol in `header`.
pub(crate) fn switching_protocols(
    upgrade: &'static str,
    extra: &[(http::HeaderName, &str)],
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static(upgrade),
    );
    for (name, value) in extra {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            h.insert(name.clone(), v);
        }
    }
    r
}

pub(crate) fn reply(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn handle(state: &Streaming, engine: Arc<Engine>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let span = tracing::info_span!("stream", kind, method = %req.method());
    let _g = span.enter();
    if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() {
        return reply(StatusCode::NOT_FOUND, "not found\n");
    }
    // A token works once, whatever happens next.
    let Some(sreq) = state.cache.take(token).filter(|r| r.kind() == kind) else {
        tracing::info!("unknown, used or expired streaming token");
        return reply(
            StatusCode::NOT_FOUND,
            "unknown or expired streaming token: ask the runtime for a new URL\n",
        );
    };
    tracing::info!(request = ?sreq, "streaming session");
    if ws::wants_websocket(&req) {
        return ws::upgrade(req, sreq, engine, state.idle_timeout);
    }
    if httpstream::wants_spdy(&req) {
        return httpstream::upgrade(req, sreq, engine, state.idle_timeout);
    }
    reply(
        StatusCode::BAD_REQUEST,
        "streaming requests must upgrade the connection (Upgrade: SPDY/3.1 or websocket)\n",
    )
}

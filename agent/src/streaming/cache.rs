//! Single-use tokens for streaming requests: CRI Exec, Attach and PortForward store what
//! was asked for and hand out a URL with a token; the first connection that presents the
//! token gets the request, later ones (and any after the token expired) get 404.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// What a streaming URL was issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRequest {
    Exec {
        container_id: String,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    Attach {
        container_id: String,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    PortForward {
        pod_id: String,
        /// Ports named in the CRI request (informational: clients name theirs per stream).
        ports: Vec<u16>,
    },
}

impl StreamRequest {
    /// The URL path segment for this kind of request.
    pub fn kind(&self) -> &'static str {
        match self {
            StreamRequest::Exec { .. } => "exec",
            StreamRequest::Attach { .. } => "attach",
            StreamRequest::PortForward { .. } => "portforward",
        }
    }
}

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "too many streaming requests in flight ({0}); retry once some have been used or expired"
    )]
    Full(usize),
    #[error("cannot generate a token: {0}")]
    Random(String),
}

/// The pending requests, by token.
#[derive(Debug)]
pub struct TokenCache {
    ttl: Duration,
    max: usize,
    pending: Mutex<HashMap<String, (StreamRequest, Instant)>>,
}

impl TokenCache {
    pub fn new(ttl: Duration, max: usize) -> TokenCache {
        TokenCache {
            ttl,
            max,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Stores `req` and returns its token: 16 random bytes, URL-safe base64.
    pub fn insert(&self, req: StreamRequest) -> Result<String, CacheError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| CacheError::Random(e.to_string()))?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let now = Instant::now();
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.retain(|_, (_, at)| now.duration_since(*at) < self.ttl);
        if p.len() >= self.max {
            return Err(CacheError::Full(self.max));
        }
        p.insert(token.clone(), (req, now));
        Ok(token)
    }

    /// Takes the request of `token` if it is pending and fresh: a token works once.
    pub fn take(&self, token: &str) -> Option<StreamRequest> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (req, at) = p.remove(token)?;
        (at.elapsed() < self.ttl).then_some(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf() -> StreamRequest {
        StreamRequest::PortForward {
            pod_id: "p".into(),
            ports: vec![80],
        }
    }

    #[test]
    fn tokens_are_single_use_unique_and_expire() {
        let c = TokenCache::new(Duration::from_secs(60), 10);
        let a = c.insert(pf()).unwrap();
        let b = c.insert(pf()).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 22);
        assert!(
            a.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        );
        assert_eq!(c.take(&a), Some(pf()));
        assert_eq!(c.take(&a), None, "a token works once");
        assert_eq!(c.take("unknown"), None);
        assert_eq!(c.take(&b).map(|r| r.kind()), Some("portforward"));

        let short = TokenCache::new(Duration::from_millis(1), 10);
        let t = short.insert(pf()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(short.take(&t), None, "expired");
    }

    #[test]
    fn bounded() {
        let c = TokenCache::new(Duration::from_secs(60), 2);
        c.insert(pf()).unwrap();
        c.insert(pf()).unwrap();
        assert!(matches!(c.insert(pf()), Err(CacheError::Full(2))));
        let expiring = TokenCache::new(Duration::from_millis(1), 1);
        expiring.insert(pf()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        expiring.insert(pf()).expect("expired entries make room");
    }
}

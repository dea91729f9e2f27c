//! `Proxy`: a small HTTP/1.1 proxy on 127.0.0.1 in front of a test registry. It logs every
//! request (to count blob downloads) and can damage blob bodies larger than 4 KiB (one
//! flipped byte in the middle, or the connection cut half-way), to test that berth verifies
//! what it downloads.
//! One request per connection (`Connection: close`), which every HTTP client handles.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to large blob bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Flip one byte in the middle.
    Corrupt,
    /// Announce the full length, send half, close.
    Truncate,
}

/// A running proxy; stops accepting when dropped.
#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Starts a proxy to `upstream`; `corrupt` flips a byte in large blob bodies.
    pub fn start(upstream: SocketAddr, corrupt: bool) -> Proxy {
        Self::start_with(upstream, if corrupt { Fault::Corrupt } else { Fault::None })
    }

    /// Starts a proxy to `upstream` that applies `fault` to large blob bodies.
    pub fn start_with(upstream: SocketAddr, fault: Fault) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l2, s2) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(0)
                .timeout_global(Some(Duration::from_secs(60)))
                .build()
                .into();
            while !s2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (agent, log) = (agent.clone(), l2.clone());
                        std::thread::spawn(move || {
                            let _ = serve(conn, upstream, fault, &agent, &log);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy { addr, log, stop }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Every request so far, as "METHOD /path".
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    conn: TcpStream,
    upstream: SocketAddr,
    fault: Fault,
    agent: &ureq::Agent,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let req = crate::http::read_request(&conn)?;
    let (method, path, headers) = (req.method, req.target, req.headers);
    log.lock().expect("log").push(format!("{method} {path}"));
    let url = format!("http://{upstream}{path}");
    let mut req = match method.as_str() {
        "HEAD" => agent.head(&url),
        _ => agent.get(&url),
    };
    for (k, v) in &headers {
        if k.eq_ignore_ascii_case("accept") || k.eq_ignore_ascii_case("authorization") {
            req = req.header(k.as_str(), v.as_str());
        }
    }
    let resp = req.call().map_err(std::io::Error::other)?;
    let status = resp.status();
    let mut out_headers = String::new();
    for (k, v) in resp.headers() {
        let k = k.as_str();
        if matches!(
            k,
            "content-type"
                | "docker-content-digest"
                | "www-authenticate"
                | "location"
                | "docker-distribution-api-version"
        ) {
            out_headers.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap_or_default()));
        }
    }
    let mut body = Vec::new();
    if method != "HEAD" {
        resp.into_body()
            .into_reader()
            .read_to_end(&mut body)
            .map_err(std::io::Error::other)?;
    }
    let damage = path.contains("/blobs/") && body.len() > 4096;
    let full_len = body.len();
    if damage && fault == Fault::Corrupt {
        let mid = body.len() / 2;
        body[mid] ^= 0xff;
    }
    if damage && fault == Fault::Truncate {
        body.truncate(full_len / 2);
    }
    let mut w = conn;
    write!(
        w,
        "HTTP/1.1 {} {}\r\n{out_headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        full_len
    )?;
    if method != "HEAD" {
        w.write_all(&body)?;
    }
    w.flush()
}

//! `TokenServer`: a Docker/distribution token service on 127.0.0.1, for testing the bearer
//! token flow end to end against Debian's docker-registry.
//!
//! It issues RS256 JWTs signed with a throwaway key (made with the `openssl` tool) whose
//! self-signed certificate the registry trusts (`rootcertbundle`); each token carries its
//! certificate in the `x5c` header. It answers:
//! - `GET /token?service=..&scope=..` with HTTP Basic credentials (what clients do with a
//!   user name and password);
//! - `POST /token` with `grant_type=refresh_token` (an identity token, OAuth2) or
//!   `grant_type=password`.
//!
//! Anything else, or wrong credentials, gets 401.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

pub const SERVICE: &str = "berth-test-registry";
pub const ISSUER: &str = "berth-test-issuer";

#[derive(Debug)]
struct Inner {
    dir: tempfile::TempDir,
    cert_der_b64: String,
    user: String,
    password: String,
    refresh_token: String,
    issued: AtomicU64,
}

/// A running token service; stops when dropped.
#[derive(Debug)]
pub struct TokenServer {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    stop: Arc<AtomicBool>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    /// Starts a token service that accepts `user`/`password` and `refresh_token`.
    /// None (after the skip/fail rule) when the `openssl` tool is missing.
    pub fn start(user: &str, password: &str, refresh_token: &str) -> Option<TokenServer> {
        crate::require::need_binary("openssl", "openssl")?;
        let dir = tempfile::Builder::new()
            .prefix("berth-token-")
            .tempdir()
            .expect("tempdir");
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=berth-test-token",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl req")
            .status
            .success();
        assert!(ok, "openssl could not make a key and certificate");
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .expect("openssl x509");
        assert!(der.status.success());
        let inner = Arc::new(Inner {
            dir,
            cert_der_b64: STANDARD.encode(&der.stdout),
            user: user.to_owned(),
            password: password.to_owned(),
            refresh_token: refresh_token.to_owned(),
            issued: AtomicU64::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let (i2, s2) = (inner.clone(), stop.clone());
        let acceptor = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => {
                        let i = i2.clone();
                        std::thread::spawn(move || {
                            let _ = serve(c, &i);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Some(TokenServer {
            addr,
            inner,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// The realm URL registries send clients to.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The `auth:` section of a registry config that trusts this service.
    pub fn registry_yaml(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm(),
            self.cert_path().display()
        )
    }

    pub fn cert_path(&self) -> PathBuf {
        self.inner.dir.path().join("cert.pem")
    }

    /// How many tokens the service has issued over HTTP.
    pub fn issued(&self) -> u64 {
        self.inner.issued.load(Ordering::Relaxed)
    }

    /// A signed token granting `actions` on repository `repo` (usable as a registry token).
    pub fn mint(&self, subject: &str, repo: &str, actions: &[&str]) -> String {
        mint(&self.inner, subject, repo, actions)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The acceptor holds the key directory: wait for it, so the directory goes too.
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn mint(inner: &Inner, subject: &str, repo: &str, actions: &[&str]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [inner.cert_der_b64]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": subject, "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", inner.issued.load(Ordering::Relaxed)),
        "access": [{"type": "repository", "name": repo, "actions": actions}],
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(inner.dir.path().join("key.pem"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl dgst");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(signing_input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("openssl dgst output");
    assert!(out.status.success(), "openssl could not sign");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(out.stdout))
}

fn query(s: &str) -> HashMap<String, String> {
    s.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(v) = hex {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve(conn: TcpStream, inner: &Inner) -> std::io::Result<()> {
    let req = crate::http::read_request(&conn)?;
    let (method, target, body) = (req.method.clone(), req.target.clone(), req.body.clone());
    let headers: HashMap<String, String> = req.headers.into_iter().collect();
    let (path, qs) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let mut params = query(qs);
    if method == "POST" {
        params.extend(query(&String::from_utf8_lossy(&body)));
    }
    let basic_ok = headers
        .get("authorization")
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .is_some_and(|d| d == format!("{}:{}", inner.user, inner.password).as_bytes());
    let granted = path == "/token"
        && match (
            method.as_str(),
            params.get("grant_type").map(String::as_str),
        ) {
            ("GET", _) => basic_ok,
            ("POST", Some("refresh_token")) => {
                params.get("refresh_token") == Some(&inner.refresh_token)
            }
            ("POST", Some("password")) => {
                params.get("username") == Some(&inner.user)
                    && params.get("password") == Some(&inner.password)
            }
            _ => false,
        };
    let mut w = conn;
    if !granted {
        let msg = b"{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"bad credentials\"}]}";
        write!(
            w,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            msg.len()
        )?;
        w.write_all(msg)?;
        return w.flush();
    }
    // scope: repository:<name>:<actions>
    let scope = params.get("scope").cloned().unwrap_or_default();
    let mut it = scope.splitn(3, ':');
    let (_kind, name, actions) = (
        it.next(),
        it.next().unwrap_or(""),
        it.next().unwrap_or("pull"),
    );
    let actions: Vec<&str> = actions.split(',').collect();
    let token = mint(inner, &inner.user, name, &actions);
    inner.issued.fetch_add(1, Ordering::Relaxed);
    let body =
        serde_json::json!({"token": token, "access_token": token, "expires_in": 300}).to_string();
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    w.flush()
}

//! `Registry`: Debian's `docker-registry` (distribution 2.x) on 127.0.0.1 at a free port,
//! with its storage in a temporary directory, optionally behind basic auth (htpasswd).
//! Images are pushed to it over the distribution API.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

use std::sync::Arc;

use crate::images::{BuiltImage, BuiltIndex, sha256_digest};
use crate::token::TokenServer;

/// A registry process started by the test; dropping it stops it.
#[derive(Debug)]
pub struct Registry {
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
    auth: Auth,
    child: Child,
    agent: ureq::Agent,
}

/// A response from the registry.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The registry binary, when installed.
pub fn registry_binary() -> Option<PathBuf> {
    crate::require::need_binary("docker-registry", "docker-registry")
}

impl Registry {
    /// Starts an open registry. None (after the skip/fail rule) when it is not installed.
    pub fn start() -> Option<Registry> {
        Self::start_inner(Auth::None)
    }

    /// Starts a registry that requires basic auth with this user and password.
    pub fn start_with_auth(user: &str, password: &str) -> Option<Registry> {
        Self::start_inner(Auth::Basic(user.to_owned(), password.to_owned()))
    }

    /// Starts a registry that requires bearer tokens from `tokens` (the distribution token
    /// flow); the harness pushes with tokens it mints itself.
    pub fn start_with_tokens(tokens: Arc<TokenServer>) -> Option<Registry> {
        Self::start_inner(Auth::Token(tokens))
    }

    fn start_inner(auth: Auth) -> Option<Registry> {
        let bin = registry_binary()?;
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("berth-registry-")
                .tempdir()
                .expect("tempdir");
            let port = free_port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut auth_yaml = String::new();
            if let Auth::Token(t) = &auth {
                auth_yaml = t.registry_yaml();
            }
            if let Auth::Basic(user, pass) = &auth {
                let hash = bcrypt::hash(pass, 5).expect("bcrypt");
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("htpasswd");
                auth_yaml = format!(
                    "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                    htpasswd.display()
                );
            }
            let config = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth_yaml}",
                dir.path().join("data").display()
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).expect("registry config");
            let log_path = dir.path().join("registry.log");
            let log = std::fs::File::create(&log_path).expect("registry log");
            let child = Command::new("setsid")
                .arg(&bin)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup"))
                .stderr(log)
                .spawn()
                .expect("spawn docker-registry");
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(60)))
                .build()
                .into();
            let mut reg = Registry {
                dir,
                addr,
                auth: auth.clone(),
                child,
                agent,
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = reg.child.try_wait() {
                    break;
                }
                if let Ok(r) = reg.get("/v2/")
                    && (r.status == 200 || r.status == 401)
                {
                    return Some(reg);
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
            // The port may have been taken between probing and binding: try another.
        }
        panic!("docker-registry did not start; last log:\n{last_log}");
    }

    /// `127.0.0.1:PORT`, the registry host as it appears in image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The registry's access and error log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Adds the harness's credentials for `repo`, if the registry needs any.
    fn authorize<B>(&self, req: ureq::RequestBuilder<B>, repo: &str) -> ureq::RequestBuilder<B> {
        match self.auth.header(repo) {
            Some(h) => req.header("Authorization", h),
            None => req,
        }
    }

    /// GET a path with the registry's credentials (if any).
    pub fn get(&self, path: &str) -> Result<Reply, ureq::Error> {
        let repo = path
            .strip_prefix("/v2/")
            .and_then(|p| {
                p.rsplit_once("/manifests/")
                    .or_else(|| p.rsplit_once("/blobs/"))
            })
            .map(|(r, _)| r)
            .unwrap_or("");
        self.get_with(path, self.auth.header(repo), &[])
    }

    /// GET a path with the given Authorization header (None: anonymous) and extra headers.
    pub fn get_with(
        &self,
        path: &str,
        authorization: Option<String>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, ureq::Error> {
        let mut req = self.agent.get(format!("http://{}{path}", self.addr));
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        reply(req.call()?)
    }

    /// Uploads a blob (monolithic upload) unless the registry has it; returns its digest.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let head = self
            .authorize(
                self.agent
                    .head(format!("http://{}/v2/{repo}/blobs/{digest}", self.addr)),
                repo,
            )
            .call()
            .expect("HEAD blob");
        if head.status() == 200 {
            return digest;
        }
        let start = reply(
            self.authorize(
                self.agent
                    .post(format!("http://{}/v2/{repo}/blobs/uploads/", self.addr)),
                repo,
            )
            .send_empty()
            .expect("start upload"),
        )
        .expect("read reply");
        assert_eq!(
            start.status,
            202,
            "start upload: {}",
            String::from_utf8_lossy(&start.body)
        );
        let location = start
            .header("Location")
            .expect("upload Location")
            .to_owned();
        let url = if location.starts_with("http") {
            location
        } else {
            format!("http://{}{location}", self.addr)
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let put = reply(
            self.authorize(self.agent.put(format!("{url}{sep}digest={digest}")), repo)
                .header("Content-Type", "application/octet-stream")
                .send(bytes)
                .expect("PUT blob"),
        )
        .expect("read reply");
        assert_eq!(
            put.status,
            201,
            "PUT blob {digest}: {}",
            String::from_utf8_lossy(&put.body)
        );
        digest
    }

    /// Uploads a manifest (or index) under a tag or digest reference; returns its digest.
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let r = reply(
            self.authorize(
                self.agent.put(format!(
                    "http://{}/v2/{repo}/manifests/{reference}",
                    self.addr
                )),
                repo,
            )
            .header("Content-Type", media_type)
            .send(bytes)
            .expect("PUT manifest"),
        )
        .expect("read reply");
        assert_eq!(
            r.status,
            201,
            "PUT manifest {repo}:{reference}: {}",
            String::from_utf8_lossy(&r.body)
        );
        sha256_digest(bytes)
    }

    /// Pushes an image's blobs and manifest as `repo:tag`; returns the manifest digest.
    pub fn push_image(&self, repo: &str, tag: &str, image: &BuiltImage) -> String {
        for (_, bytes) in &image.blobs {
            self.push_blob(repo, bytes);
        }
        self.push_blob(repo, &image.config);
        self.push_manifest(repo, tag, image.manifest_media_type, &image.manifest)
    }

    /// Pushes every platform image of an index, then the index as `repo:tag`.
    pub fn push_index(&self, repo: &str, tag: &str, index: &BuiltIndex) -> String {
        for (image, _) in &index.images {
            self.push_image(repo, &image.manifest_digest, image);
        }
        self.push_manifest(repo, tag, index.media_type, &index.bytes)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the harness authenticates to its registry.
#[derive(Debug, Clone)]
enum Auth {
    None,
    Basic(String, String),
    Token(Arc<TokenServer>),
}

impl Auth {
    fn header(&self, repo: &str) -> Option<String> {
        match self {
            Auth::None => None,
            Auth::Basic(u, p) => Some(basic(u, p)),
            Auth::Token(t) => Some(format!(
                "Bearer {}",
                t.mint("berth-harness", repo, &["pull", "push"])
            )),
        }
    }
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

fn reply(resp: ureq::http::Response<ureq::Body>) -> Result<Reply, ureq::Error> {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let mut body = Vec::new();
    resp.into_body()
        .into_reader()
        .read_to_end(&mut body)
        .map_err(ureq::Error::Io)?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A second registry process serving the same storage over HTTPS, with a throwaway
/// certificate for 127.0.0.1 (made with the `openssl` tool).
#[derive(Debug)]
pub struct TlsRegistry {
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
    child: Child,
}

impl TlsRegistry {
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The PEM CA certificate clients must trust.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// Serves this registry's content over HTTPS from a second process.
    pub fn serve_tls(&self) -> Option<TlsRegistry> {
        crate::require::need_binary("openssl", "openssl")?;
        let bin = registry_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-tls-")
            .tempdir()
            .expect("tempdir");
        // A CA and a server certificate for 127.0.0.1 signed by it (TLS libraries refuse a
        // CA certificate used as the server's own).
        let p = |n: &str| dir.path().join(n);
        let (ca, ca_key, cert, key, csr, ext) = (
            p("ca.pem"),
            p("ca-key.pem"),
            p("cert.pem"),
            p("key.pem"),
            p("req.csr"),
            p("ext.cnf"),
        );
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext");
        let run = |args: &[&std::ffi::OsStr]| {
            Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl")
                .status
                .success()
        };
        let s = |x: &'static str| std::ffi::OsStr::new(x);
        let ok = run(&[
            s("req"),
            s("-x509"),
            s("-newkey"),
            s("rsa:2048"),
            s("-nodes"),
            s("-days"),
            s("1"),
            s("-subj"),
            s("/CN=berth test CA"),
            s("-keyout"),
            ca_key.as_os_str(),
            s("-out"),
            ca.as_os_str(),
        ]) && run(&[
            s("req"),
            s("-newkey"),
            s("rsa:2048"),
            s("-nodes"),
            s("-subj"),
            s("/CN=127.0.0.1"),
            s("-keyout"),
            key.as_os_str(),
            s("-out"),
            csr.as_os_str(),
        ]) && run(&[
            s("x509"),
            s("-req"),
            s("-in"),
            csr.as_os_str(),
            s("-CA"),
            ca.as_os_str(),
            s("-CAkey"),
            ca_key.as_os_str(),
            s("-CAcreateserial"),
            s("-days"),
            s("1"),
            s("-extfile"),
            ext.as_os_str(),
            s("-out"),
            cert.as_os_str(),
        ]);
        assert!(ok, "openssl could not make a certificate");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n  tls:\n    certificate: {}\n    key: {}\n",
            self.dir.path().join("data").display(),
            cert.display(),
            key.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("config");
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path).expect("log");
        let child = Command::new("setsid")
            .arg(bin)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let reg = TlsRegistry { dir, addr, child };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Some(reg);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "TLS registry did not start: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }
}

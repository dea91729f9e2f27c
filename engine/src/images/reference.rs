//! Image references: parsing and normalisation the way Docker and kubelet do it.
//!
//! `busybox` -> `docker.io/library/busybox:latest`; `user/app` -> `docker.io/user/app:latest`;
//! `localhost:5000/app@sha256:...` keeps its registry and digest. A name whose first
//! component has no '.' or ':' and is not `localhost` is on Docker Hub.

use std::fmt;
use std::str::FromStr;

use crate::id::Digest;

pub const DOCKER_HUB: &str = "docker.io";
const MAX_NAME: usize = 255;

/// A normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ImageRef {
    /// Registry host, with port if any (`docker.io`, `127.0.0.1:5000`, `[::1]:5000`).
    pub domain: String,
    /// Repository path (`library/busybox`).
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// Why a reference was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct BadReference {
    pub input: String,
    pub reason: &'static str,
}

impl ImageRef {
    /// `domain/path`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// `domain/path:tag`, when the reference has a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `domain/path@digest` for a given manifest digest: a repo digest.
    pub fn with_digest(&self, d: &Digest) -> String {
        format!("{}@{d}", self.name())
    }

    /// What to ask the registry for: the digest when there is one, else the tag.
    pub fn registry_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// Whether the registry is on this machine (plain HTTP by default, as Docker does).
    pub fn is_loopback_registry(&self) -> bool {
        is_loopback_host(&self.domain)
    }
}

/// `localhost`, 127.0.0.0/8 or ::1, with or without a port.
pub fn is_loopback_host(domain: &str) -> bool {
    let host = if let Some(rest) = domain.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        domain.rsplit_once(':').map_or(domain, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                domain
            }
        })
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn bad(input: &str, reason: &'static str) -> BadReference {
    BadReference {
        input: input.to_owned(),
        reason,
    }
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+ ((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            i += 1;
            continue;
        }
        let sep_start = i;
        while i < b.len() && matches!(b[i], b'.' | b'_' | b'-') {
            i += 1;
        }
        let sep = &c[sep_start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok || sep.is_empty() {
            return false;
        }
    }
    true
}

fn valid_domain(d: &str) -> bool {
    if let Some(rest) = d.strip_prefix('[') {
        let Some((ip, port)) = rest.split_once(']') else {
            return false;
        };
        return ip.parse::<std::net::Ipv6Addr>().is_ok()
            && (port.is_empty()
                || port
                    .strip_prefix(':')
                    .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())));
    }
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

impl FromStr for ImageRef {
    type Err = BadReference;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(bad(input, "empty"));
        }
        if input.len() > 4096 {
            return Err(bad(input, "too long"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => (
                r,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| bad(input, "digest is not sha256:<64 hex digits>"))?,
                ),
            ),
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(bad(input, "invalid tag"));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.starts_with('[') =>
            {
                (first.to_owned(), remainder.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        if !valid_domain(&domain) {
            return Err(bad(input, "invalid registry host"));
        }
        let domain = if domain == "index.docker.io" || domain == "registry-1.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            domain
        };
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad(input, "repository names must be lower case"));
        }
        if !path.split('/').all(valid_component) {
            return Err(bad(input, "invalid repository name"));
        }
        let path = if domain == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if domain.len() + 1 + path.len() > MAX_NAME {
            return Err(bad(input, "name longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(ImageRef {
            domain,
            path,
            tag,
            digest,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalises_like_docker() {
        for (input, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("user/app", "docker.io/user/app:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/library/busybox:1",
                "docker.io/library/busybox:1",
            ),
            ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/a/b/c:v1", "localhost:5000/a/b/c:v1"),
            ("127.0.0.1:5000/busybox", "127.0.0.1:5000/busybox:latest"),
            ("[::1]:5000/busybox:x", "[::1]:5000/busybox:x"),
            (
                "my-reg.example.com/a_b/c__d/e-f.g:v1.2-3_x",
                "my-reg.example.com/a_b/c__d/e-f.g:v1.2-3_x",
            ),
        ] {
            let r: ImageRef = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), want, "{input}");
        }
        let r: ImageRef = format!("busybox@{D}").parse().unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        assert_eq!(r.registry_reference(), D);
        let r: ImageRef = format!("busybox:1@{D}").parse().unwrap();
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.registry_reference(), D);
    }

    #[test]
    fn refuses_malformed_references() {
        for input in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-bad",
            "busybox@sha256:abc",
            "a//b",
            "-a/b",
            "a/b-",
            "a/../b",
            "a/./b",
            "a..b",
            "bad host:5000/x",
            "host:port/x",
            "[::1/x",
        ] {
            assert!(input.parse::<ImageRef>().is_err(), "{input} accepted");
        }
        let long = format!("example.com/{}", "a".repeat(250));
        assert!(long.parse::<ImageRef>().is_err());
    }

    #[test]
    fn loopback_registries() {
        for (d, want) in [
            ("localhost", true),
            ("localhost:5000", true),
            ("127.0.0.1:5000", true),
            ("127.9.9.9", true),
            ("[::1]:5000", true),
            ("docker.io", false),
            ("10.0.0.1:5000", false),
            ("localhost.example.com", false),
        ] {
            assert_eq!(is_loopback_host(d), want, "{d}");
        }
    }
}

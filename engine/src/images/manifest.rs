//! Manifests, indexes and image configs (OCI image spec and Docker schema2), platform
//! selection, and the limits every document is read under.

use serde::Deserialize;

use crate::id::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Media types berth asks registries for, most preferred first.
pub const ACCEPT: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Largest manifest or index berth reads (the distribution spec's recommended limit).
pub const MAX_MANIFEST: u64 = 4 << 20;
/// Largest image config berth reads.
pub const MAX_CONFIG: u64 = 8 << 20;

/// Errors in image documents.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{what}: not valid JSON: {message}")]
    Json { what: &'static str, message: String },
    #[error(
        "Docker schema 1 manifests are not supported (deprecated since 2017); push the image again with a current client"
    )]
    Schema1,
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("no image in the index matches this node's platform {wanted}; available: {available}")]
    NoMatchingPlatform { wanted: String, available: String },
    #[error("unsupported layer media type {0:?}")]
    UnsupportedLayer(String),
    #[error("image has {layers} layers but its config lists {diff_ids} diff_ids")]
    LayerCountMismatch { layers: usize, diff_ids: usize },
    #[error("{0}")]
    Invalid(String),
}

/// A content descriptor.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub urls: Vec<String>,
}

/// An image platform.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default, serde::Serialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = self.variant.as_deref().filter(|v| !v.is_empty()) {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// This machine's platform in OCI terms.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(str::to_owned),
        }
    }

    /// Whether an index entry's platform runs here. A missing variant matches; arm64's
    /// default variant is v8.
    pub fn matches(&self, candidate: &Platform) -> bool {
        if candidate.os != self.os || candidate.architecture != self.architecture {
            return false;
        }
        let norm = |v: &Option<String>| -> Option<String> {
            match v.as_deref() {
                None | Some("") => None,
                Some("v8") if self.architecture == "arm64" => None,
                Some(x) => Some(x.to_owned()),
            }
        };
        match (norm(&self.variant), norm(&candidate.variant)) {
            (_, None) => true,
            (a, b) => a == b,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    layers: Option<serde_json::Value>,
    #[serde(default)]
    fs_layers: Option<serde_json::Value>,
}

/// An image manifest (OCI or Docker schema2).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// An index (OCI image index or Docker manifest list).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// A parsed manifest-or-index.
#[derive(Debug, Clone)]
pub enum Document {
    Manifest(Manifest),
    Index(Index),
}

/// Parses a manifest or index; the registry's Content-Type is a hint, the document's own
/// mediaType and shape decide.
pub fn parse_document(bytes: &[u8], content_type: Option<&str>) -> Result<Document, ManifestError> {
    let json = |e: serde_json::Error| ManifestError::Json {
        what: "manifest",
        message: e.to_string(),
    };
    let probe: Probe = serde_json::from_slice(bytes).map_err(json)?;
    let media = probe
        .media_type
        .clone()
        .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or(c).trim().to_owned()));
    if probe.schema_version == Some(1)
        || probe.fs_layers.is_some()
        || matches!(
            media.as_deref(),
            Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED)
        )
    {
        return Err(ManifestError::Schema1);
    }
    let is_index = match media.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        // OCI allows documents without mediaType; decide by shape.
        None | Some("application/json" | "") => probe.manifests.is_some() && probe.layers.is_none(),
        Some(other) => return Err(ManifestError::UnsupportedMediaType(other.to_owned())),
    };
    if is_index {
        Ok(Document::Index(
            serde_json::from_slice(bytes).map_err(json)?,
        ))
    } else {
        let m: Manifest = serde_json::from_slice(bytes).map_err(json)?;
        for l in &m.layers {
            LayerCompression::from_media_type(&l.media_type)?;
        }
        Ok(Document::Manifest(m))
    }
}

/// Picks the index entry for `platform`, preferring an exact variant match.
pub fn select_platform<'a>(
    index: &'a Index,
    platform: &Platform,
) -> Result<&'a Descriptor, ManifestError> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
        .collect();
    let exact = candidates.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.variant == platform.variant)
    });
    exact
        .or(candidates.first())
        .copied()
        .ok_or_else(|| ManifestError::NoMatchingPlatform {
            wanted: platform.to_string(),
            available: index
                .manifests
                .iter()
                .map(|d| {
                    d.platform
                        .as_ref()
                        .map_or("(none)".to_owned(), ToString::to_string)
                })
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

impl LayerCompression {
    pub fn from_media_type(m: &str) -> Result<Self, ManifestError> {
        Ok(match m {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => LayerCompression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => {
                LayerCompression::Gzip
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                LayerCompression::Zstd
            }
            other => return Err(ManifestError::UnsupportedLayer(other.to_owned())),
        })
    }
}

/// The parts of an image config berth uses.
#[derive(Debug, Clone, Deserialize, serde::Serialize, Default, PartialEq)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub config: RunConfig,
    pub rootfs: RootFs,
}

/// The image's run configuration (`config` in the image config).
#[derive(Debug, Clone, Deserialize, serde::Serialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, deserialize_with = "null_default")]
    pub user: String,
    #[serde(default, deserialize_with = "null_default")]
    pub env: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub entrypoint: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub cmd: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub working_dir: String,
    #[serde(default, deserialize_with = "null_default")]
    pub stop_signal: String,
    #[serde(default, deserialize_with = "null_default")]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    pub volumes: std::collections::BTreeMap<String, serde_json::Value>,
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, Default, PartialEq)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

/// Parses an image config and checks it against the manifest's layer count.
pub fn parse_config(bytes: &[u8], layers: usize) -> Result<ImageConfig, ManifestError> {
    let c: ImageConfig = serde_json::from_slice(bytes).map_err(|e| ManifestError::Json {
        what: "image config",
        message: e.to_string(),
    })?;
    if c.rootfs.diff_ids.len() != layers {
        return Err(ManifestError::LayerCountMismatch {
            layers,
            diff_ids: c.rootfs.diff_ids.len(),
        });
    }
    Ok(c)
}

/// Chain ids of a layer stack: `chain[0] = diff[0]`, `chain[i] = sha256(chain[i-1] + " " + diff[i])`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => Digest::of(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    #[test]
    fn parses_manifests_and_indexes_by_type_and_shape() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"x","digest":"{}","size":1}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":2}}]}}"#,
            d(1),
            d(2)
        );
        assert!(matches!(
            parse_document(m.as_bytes(), None).unwrap(),
            Document::Manifest(_)
        ));
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":3,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            d(3)
        );
        assert!(matches!(
            parse_document(i.as_bytes(), Some(OCI_INDEX)).unwrap(),
            Document::Index(_)
        ));
        assert!(matches!(
            parse_document(i.as_bytes(), None).unwrap(),
            Document::Index(_)
        ));
    }

    #[test]
    fn refuses_schema1_and_unknown_layers() {
        let s1 = r#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        let e = parse_document(s1.as_bytes(), None).unwrap_err();
        assert!(matches!(e, ManifestError::Schema1));
        assert!(e.to_string().contains("schema 1"));
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"{}","size":1}},"layers":[{{"mediaType":"application/x-rar","digest":"{}","size":2}}]}}"#,
            d(1),
            d(2)
        );
        assert!(matches!(
            parse_document(m.as_bytes(), None).unwrap_err(),
            ManifestError::UnsupportedLayer(_)
        ));
        assert!(parse_document(b"{not json", None).is_err());
    }

    #[test]
    fn selects_the_host_platform() {
        let mk = |arch: &str, variant: Option<&str>, n: u8| Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: d(n).parse().unwrap(),
            size: 1,
            platform: Some(Platform {
                os: "linux".into(),
                architecture: arch.into(),
                variant: variant.map(str::to_owned),
            }),
            urls: vec![],
        };
        let idx = Index {
            media_type: None,
            manifests: vec![
                mk("arm", Some("v6"), 1),
                mk("arm", Some("v7"), 2),
                mk("amd64", None, 3),
                mk("arm64", None, 4),
            ],
        };
        let amd = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        };
        assert_eq!(select_platform(&idx, &amd).unwrap().digest.as_str(), d(3));
        let arm7 = Platform {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: Some("v7".into()),
        };
        assert_eq!(select_platform(&idx, &arm7).unwrap().digest.as_str(), d(2));
        let arm64 = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        };
        assert_eq!(select_platform(&idx, &arm64).unwrap().digest.as_str(), d(4));
        let s390 = Platform {
            os: "linux".into(),
            architecture: "s390x".into(),
            variant: None,
        };
        let e = select_platform(&idx, &s390).unwrap_err();
        assert!(e.to_string().contains("linux/arm/v6"), "{e}");
    }

    #[test]
    fn config_nulls_and_chain_ids() {
        let c = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":null,"Cmd":["sh"],"User":""}},"rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#,
            d(1),
            d(2)
        );
        let cfg = parse_config(c.as_bytes(), 2).unwrap();
        assert!(cfg.config.env.is_empty());
        assert_eq!(cfg.config.cmd, vec!["sh"]);
        assert!(parse_config(c.as_bytes(), 3).is_err());
        let ids = chain_ids(&cfg.rootfs.diff_ids);
        assert_eq!(ids[0], cfg.rootfs.diff_ids[0]);
        assert_eq!(ids[1], Digest::of(format!("{} {}", d(1), d(2)).as_bytes()));
    }
}

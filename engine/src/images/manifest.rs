//! Manifests, indexes and image configs (OCI image spec and Docker schema2), platform
//! selection, and the limits every document is read under.
//!
//! The documents are parsed as `oci-spec`'s image types; what stays berth's is the
//! judgement over them: the size limits (applied to the bytes before parsing, since
//! oci-spec reads without bound), the schema-1 refusal, deciding manifest or index from
//! the mediaType or the shape, narrowing every digest to sha256 ([`crate::id::Digest`]:
//! oci-spec accepts any algorithm, and the diff_ids not at all), the layer media types
//! berth can unpack, and which index entry runs on this node. The raw bytes are what is
//! stored and verified; nothing is ever re-serialized.

use oci_spec::image as oci;
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
/// Most layers an image may have. Docker builds at most 127; overlayfs stacks at most 500
/// lower layers, and before Linux 6.8 all their paths must fit in one page of mount
/// options. An image above the limit is refused at pull time, before anything is fetched.
pub const MAX_LAYERS: usize = 128;

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
    #[error(
        "the image has {0} layers; berth takes at most {MAX_LAYERS} (Docker builds at most 127, overlayfs stacks at most 500); squash it"
    )]
    TooManyLayers(usize),
    #[error("image has {layers} layers but its config lists {diff_ids} diff_ids")]
    LayerCountMismatch { layers: usize, diff_ids: usize },
    #[error("{0}")]
    Invalid(String),
}

/// What a descriptor names, narrowed to what berth fetches: a sha256 blob of a known size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

impl Blob {
    /// Narrows a descriptor: its digest must be a well-formed sha256.
    pub fn of(d: &oci::Descriptor, what: &str) -> Result<Blob, ManifestError> {
        Ok(Blob {
            media_type: d.media_type().to_string(),
            digest: narrow_digest(d.digest().as_ref(), what)?,
            size: d.size(),
        })
    }
}

fn narrow_digest(s: &str, what: &str) -> Result<Digest, ManifestError> {
    s.parse()
        .map_err(|e| ManifestError::Invalid(format!("{what}: digest {s:?}: {e}")))
}

/// A platform as berth wants it: this node's, or the one an operator configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
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

impl From<&oci::Platform> for Platform {
    fn from(p: &oci::Platform) -> Platform {
        Platform {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone(),
        }
    }
}

impl Platform {
    /// This machine's platform in OCI terms. berth's own table rather than oci-spec's
    /// `Platform::default()`, which has no variant (arm64 is v8, arm v7 here).
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

/// Just enough of a document to route it before parsing it properly.
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

/// An image manifest (OCI or Docker schema2), checked: sha256 digests, and layers berth
/// can unpack.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The media type the document declares (or was served as); OCI's when neither says.
    pub media_type: String,
    pub config: Blob,
    pub layers: Vec<Layer>,
}

/// One layer of a manifest.
#[derive(Debug, Clone)]
pub struct Layer {
    pub blob: Blob,
    pub compression: LayerCompression,
}

/// A parsed manifest-or-index.
#[derive(Debug, Clone)]
pub enum Document {
    Manifest(Manifest),
    Index(Box<oci::ImageIndex>),
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
        return Ok(Document::Index(Box::new(
            serde_json::from_slice(bytes).map_err(json)?,
        )));
    }
    let m: oci::ImageManifest = serde_json::from_slice(bytes).map_err(json)?;
    if m.layers().len() > MAX_LAYERS {
        return Err(ManifestError::TooManyLayers(m.layers().len()));
    }
    let layers = m
        .layers()
        .iter()
        .map(|l| {
            Ok(Layer {
                compression: LayerCompression::from_media_type(l.media_type())?,
                blob: Blob::of(l, "layer")?,
            })
        })
        .collect::<Result<Vec<_>, ManifestError>>()?;
    Ok(Document::Manifest(Manifest {
        media_type: media
            .filter(|m| m == OCI_MANIFEST || m == DOCKER_MANIFEST)
            .unwrap_or_else(|| OCI_MANIFEST.to_owned()),
        config: Blob::of(m.config(), "image config")?,
        layers,
    }))
}

/// Picks the index entry for `platform`, preferring an exact variant match.
pub fn select_platform(
    index: &oci::ImageIndex,
    platform: &Platform,
) -> Result<Blob, ManifestError> {
    let entries: Vec<(Option<Platform>, &oci::Descriptor)> = index
        .manifests()
        .iter()
        .map(|d| (d.platform().as_ref().map(Platform::from), d))
        .collect();
    let candidates: Vec<&(Option<Platform>, &oci::Descriptor)> = entries
        .iter()
        .filter(|(p, _)| p.as_ref().is_some_and(|p| platform.matches(p)))
        .collect();
    let exact = candidates
        .iter()
        .find(|(p, _)| p.as_ref().is_some_and(|p| p.variant == platform.variant));
    match exact.or(candidates.first()) {
        Some((_, d)) => Blob::of(d, "index entry"),
        None => Err(ManifestError::NoMatchingPlatform {
            wanted: platform.to_string(),
            available: entries
                .iter()
                .map(|(p, _)| p.as_ref().map_or("(none)".to_owned(), ToString::to_string))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

impl LayerCompression {
    /// From a layer's media type: the OCI ones (oci-spec's variants) and Docker's, which
    /// oci-spec carries as `Other`.
    pub fn from_media_type(m: &oci::MediaType) -> Result<Self, ManifestError> {
        use oci::MediaType as M;
        Ok(match m {
            M::ImageLayer | M::ImageLayerNonDistributable => LayerCompression::None,
            M::ImageLayerGzip | M::ImageLayerNonDistributableGzip => LayerCompression::Gzip,
            M::ImageLayerZstd | M::ImageLayerNonDistributableZstd => LayerCompression::Zstd,
            M::Other(s) => match s.as_str() {
                "application/vnd.docker.image.rootfs.diff.tar" => LayerCompression::None,
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
                | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                    LayerCompression::Gzip
                }
                other => return Err(ManifestError::UnsupportedLayer(other.to_owned())),
            },
            other => return Err(ManifestError::UnsupportedLayer(other.to_string())),
        })
    }
}

/// The parts of an image config berth uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageConfig {
    pub architecture: String,
    pub os: String,
    pub variant: Option<String>,
    pub created: Option<String>,
    pub config: RunConfig,
    pub diff_ids: Vec<Digest>,
}

/// The image's run configuration (`config` in the image config), as the image record
/// stores it: berth's own type, so the record's format is berth's to migrate.
#[derive(Debug, Clone, Deserialize, serde::Serialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct RunConfig {
    pub user: String,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub stop_signal: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub volumes: std::collections::BTreeMap<String, serde_json::Value>,
}

impl From<&oci::Config> for RunConfig {
    fn from(c: &oci::Config) -> RunConfig {
        let empty = || serde_json::Value::Object(serde_json::Map::new());
        RunConfig {
            user: c.user().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
            stop_signal: c.stop_signal().clone().unwrap_or_default(),
            labels: c
                .labels()
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            volumes: c
                .volumes()
                .iter()
                .flatten()
                .map(|v| (v.clone(), empty()))
                .collect(),
        }
    }
}

/// Parses an image config and checks it against the manifest's layer count.
pub fn parse_config(bytes: &[u8], layers: usize) -> Result<ImageConfig, ManifestError> {
    let c: oci::ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Json {
            what: "image config",
            message: e.to_string(),
        })?;
    let diff_ids = c
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| narrow_digest(d, "image config rootfs.diff_ids"))
        .collect::<Result<Vec<_>, _>>()?;
    if diff_ids.len() != layers {
        return Err(ManifestError::LayerCountMismatch {
            layers,
            diff_ids: diff_ids.len(),
        });
    }
    Ok(ImageConfig {
        architecture: c.architecture().to_string(),
        os: c.os().to_string(),
        variant: c.variant().clone(),
        created: c.created().clone(),
        config: c.config().as_ref().map(RunConfig::from).unwrap_or_default(),
        diff_ids,
    })
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
    fn refuses_more_layers_than_the_limit() {
        let doc = |n: usize| {
            let layer = format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":2}}"#,
                d(2)
            );
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"{}","size":1}},"layers":[{}]}}"#,
                d(1),
                vec![layer; n].join(",")
            )
        };
        assert!(parse_document(doc(MAX_LAYERS).as_bytes(), None).is_ok());
        let e = parse_document(doc(10_000).as_bytes(), None).unwrap_err();
        assert!(matches!(e, ManifestError::TooManyLayers(10_000)), "{e}");
        assert!(e.to_string().contains("at most 128"), "{e}");
    }

    fn index(entries: &[(&str, Option<&str>, u8)]) -> oci::ImageIndex {
        let manifests: Vec<String> = entries
            .iter()
            .map(|(arch, variant, n)| {
                let variant = variant.map_or(String::new(), |v| format!(r#","variant":"{v}""#));
                format!(
                    r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"{arch}"{variant}}}}}"#,
                    d(*n)
                )
            })
            .collect();
        let doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
            manifests.join(",")
        );
        match parse_document(doc.as_bytes(), None).unwrap() {
            Document::Index(i) => *i,
            other => panic!("{other:?}"),
        }
    }

    fn platform(arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(str::to_owned),
        }
    }

    #[test]
    fn selects_the_host_platform() {
        let idx = index(&[
            ("arm", Some("v6"), 1),
            ("arm", Some("v7"), 2),
            ("amd64", None, 3),
            ("arm64", None, 4),
        ]);
        let pick = |p: Platform| select_platform(&idx, &p).map(|b| b.digest.to_string());
        assert_eq!(pick(platform("amd64", None)).unwrap(), d(3));
        assert_eq!(pick(platform("arm", Some("v7"))).unwrap(), d(2));
        assert_eq!(pick(platform("arm64", Some("v8"))).unwrap(), d(4));
        let e = pick(platform("s390x", None)).unwrap_err();
        assert!(e.to_string().contains("linux/arm/v6"), "{e}");
        assert!(Platform::host().os == "linux");
    }

    #[test]
    fn docker_schema2_documents_and_their_layer_types() {
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":7,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            d(5)
        );
        let Document::Index(idx) = parse_document(list.as_bytes(), None).unwrap() else {
            panic!("a manifest list is an index");
        };
        let b = select_platform(&idx, &platform("amd64", None)).unwrap();
        assert_eq!((b.media_type.as_str(), b.size), (DOCKER_MANIFEST, 7));
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":1}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar","digest":"{}","size":2}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{}","size":3}}]}}"#,
            d(1),
            d(2),
            d(3)
        );
        let Document::Manifest(m) = parse_document(m.as_bytes(), None).unwrap() else {
            panic!("a manifest");
        };
        assert_eq!(m.media_type, DOCKER_MANIFEST);
        assert_eq!(
            m.layers.iter().map(|l| l.compression).collect::<Vec<_>>(),
            vec![LayerCompression::None, LayerCompression::Zstd]
        );
        assert_eq!(m.layers[1].blob.digest.to_string(), d(3));
    }

    #[test]
    fn digests_are_narrowed_to_sha256() {
        // oci-spec accepts any algorithm; berth names blobs by sha256 only.
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"foo:bar","size":1}},"layers":[]}}"#
        );
        let e = parse_document(m.as_bytes(), None).unwrap_err();
        assert!(e.to_string().contains("foo:bar"), "{e}");
        let c = r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["bogus"]}}"#;
        let e = parse_config(c.as_bytes(), 1).unwrap_err();
        assert!(e.to_string().contains("diff_ids"), "{e}");
    }

    #[test]
    fn config_nulls_and_chain_ids() {
        let c = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":null,"Cmd":["sh"],"User":"","Labels":{{"b":"2","a":"1"}},"Volumes":{{"/data":{{}}}},"ExposedPorts":{{"80/tcp":{{}}}}}},"container_config":{{"Hostname":"x"}},"rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#,
            d(1),
            d(2)
        );
        let cfg = parse_config(c.as_bytes(), 2).unwrap();
        assert!(cfg.config.env.is_empty());
        assert_eq!(cfg.config.cmd, vec!["sh"]);
        assert_eq!(cfg.config.labels.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(cfg.config.volumes.contains_key("/data"));
        assert_eq!(
            (cfg.os.as_str(), cfg.architecture.as_str()),
            ("linux", "amd64")
        );
        assert!(matches!(
            parse_config(c.as_bytes(), 3).unwrap_err(),
            ManifestError::LayerCountMismatch { .. }
        ));
        let ids = chain_ids(&cfg.diff_ids);
        assert_eq!(ids[0], cfg.diff_ids[0]);
        assert_eq!(ids[1], Digest::of(format!("{} {}", d(1), d(2)).as_bytes()));
        // A config without its REQUIRED architecture is refused, with the reason.
        let e = parse_config(
            br#"{"os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
            0,
        )
        .unwrap_err();
        assert!(e.to_string().contains("architecture"), "{e}");
    }
}

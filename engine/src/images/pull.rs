//! Pulling an image: resolve -> fetch (bounded concurrency, lease-protected) -> unpack.
//!
//! 1. Resolve the reference on each endpoint in turn (mirrors, then the origin) until one
//!    answers; the rest of the pull uses that endpoint. Failures on a mirror fall through.
//! 2. An index is narrowed to this node's platform; manifests and the config are read with
//!    hard size limits and checked against their digests.
//! 3. Layers are fetched in parallel (at most `max_concurrent_downloads`). Each blob is
//!    streamed from the registry into a blocking task that writes it to the content store
//!    (hashing, size-capped) *and* unpacks it at the same time into a fresh layer
//!    directory, hashing the uncompressed stream. The layer becomes visible only if the
//!    blob's digest and the uncompressed diff_id both check out.
//! 4. The image record and its tags are written in one transaction.

use crate::clock::now_nanos;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use oci_client::Reference;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use tracing::Instrument;

use super::lease::{Inflight, Lease, Leases};
use super::manifest::{
    self, ACCEPT, Document, LayerCompression, MAX_CONFIG, MAX_MANIFEST, ManifestError, Platform,
};
use super::reference::ImageRef;
use super::registry::{ClientError, Credentials, EndpointClient, RegistryConfig};
use crate::content::{ContentError, ContentStore};
use crate::error::{ErrorKind, IoError};
use crate::id::Digest;
use crate::snapshots::SnapshotStore;
use crate::snapshots::apply::{self, ApplyError, Limits};
use crate::state::StateDb;
use crate::state::StateError;
use crate::state::records::{ImageRecord, LayerRecord, RECORD_VERSION, SnapshotRecord};

mod layers;
pub use layers::ChannelReader;

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("registry {endpoint}: {message}")]
    Registry {
        endpoint: String,
        message: String,
        kind: ErrorKind,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{what} {digest} is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        what: &'static str,
        digest: String,
        size: u64,
        limit: u64,
    },
    #[error("{what}: registry sent content with digest {actual}, expected {expected}")]
    DigestMismatch {
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error(
        "layer {layer}: uncompressed content has digest {actual}, but the image config says {expected}"
    )]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("layer {layer}: {source}")]
    Apply {
        layer: Digest,
        #[source]
        source: ApplyError,
    },
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("internal: {0}")]
    Internal(String),
}

impl PullError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            PullError::Registry { kind, .. } => *kind,
            PullError::Manifest(ManifestError::NoMatchingPlatform { .. }) => ErrorKind::NotFound,
            PullError::Manifest(_) => ErrorKind::InvalidArgument,
            PullError::TooLarge { .. }
            | PullError::DigestMismatch { .. }
            | PullError::DiffIdMismatch { .. } => ErrorKind::DataLoss,
            PullError::Apply { source, .. } => source.kind(),
            PullError::Content(e) => e.kind(),
            PullError::Client(ClientError::CaFile { .. }) => ErrorKind::FailedPrecondition,
            PullError::Client(ClientError::Token { .. }) => ErrorKind::PermissionDenied,
            PullError::Io(_) | PullError::Internal(_) => ErrorKind::Internal,
            PullError::State(e) => e.kind(),
        }
    }
}

/// Counters kept for metrics.
#[derive(Debug, Default)]
pub struct PullStats {
    pub pulls: AtomicU64,
    pub failures: AtomicU64,
    pub bytes: AtomicU64,
    pub micros: AtomicU64,
}

/// What a pull needs from the engine.
#[derive(Debug, Clone)]
pub struct Puller {
    pub db: Arc<StateDb>,
    pub content: Arc<ContentStore>,
    pub snapshots: Arc<SnapshotStore>,
    pub leases: Arc<Leases>,
    pub inflight: Arc<Inflight>,
    pub registry: Arc<RegistryConfig>,
    pub max_concurrent_downloads: usize,
    pub limits: Limits,
    pub stats: Arc<PullStats>,
    pub platform: Platform,
    /// Flush each unpacked layer to disk before it becomes visible.
    pub sync_layers: bool,
}

/// Bytes downloaded by the current pull, for progress lines.
#[derive(Debug, Default)]
struct Progress {
    bytes: AtomicU64,
    total: AtomicU64,
}

impl Puller {
    /// Pulls an image and records it; returns the stored record.
    pub async fn pull(
        &self,
        reference: &ImageRef,
        creds: &Credentials,
    ) -> Result<ImageRecord, PullError> {
        let start = Instant::now();
        let lease = self.leases.acquire();
        let progress = Arc::new(Progress::default());
        let ticker = {
            let progress = progress.clone();
            let image = reference.to_string();
            tokio::spawn(async move {
                let mut last = 0u64;
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let now = progress.bytes.load(Ordering::Relaxed);
                    tracing::info!(
                        image = %image,
                        downloaded_bytes = now,
                        total_bytes = progress.total.load(Ordering::Relaxed),
                        rate_mib_s = format!("{:.1}", (now - last) as f64 / 5.0 / (1 << 20) as f64),
                        "pull in progress"
                    );
                    last = now;
                }
            })
        };
        let result = self
            .pull_any_endpoint(reference, creds, &lease, &progress)
            .await;
        ticker.abort();
        let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats.pulls.fetch_add(1, Ordering::Relaxed);
        self.stats.micros.fetch_add(micros, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(progress.bytes.load(Ordering::Relaxed), Ordering::Relaxed);
        match &result {
            Ok(rec) => tracing::info!(
                image = %reference,
                id = %rec.id,
                downloaded_bytes = progress.bytes.load(Ordering::Relaxed),
                seconds = format!("{:.3}", start.elapsed().as_secs_f64()),
                "image pulled"
            ),
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(image = %reference, error = %scrub(&e.to_string(), creds), "pull failed");
            }
        }
        result.map_err(|e| match e {
            PullError::Registry {
                endpoint,
                message,
                kind,
            } => PullError::Registry {
                endpoint,
                message: scrub(&message, creds),
                kind,
            },
            other => other,
        })
    }

    async fn pull_any_endpoint(
        &self,
        reference: &ImageRef,
        creds: &Credentials,
        lease: &Lease,
        progress: &Arc<Progress>,
    ) -> Result<ImageRecord, PullError> {
        let endpoints = self.registry.endpoints(&reference.domain);
        let mut last = None;
        let n = endpoints.len();
        for (i, ep) in endpoints.into_iter().enumerate() {
            let label = format!("{ep:?}");
            let client = match EndpointClient::new(ep, creds, &reference.path).await {
                Ok(c) => c,
                Err(e) if i + 1 < n => {
                    tracing::warn!(image = %reference, endpoint = %label, error = %scrub(&e.to_string(), creds), "endpoint failed; trying the next");
                    last = Some(e.into());
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match self.pull_from(&client, reference, lease, progress).await {
                Ok(r) => return Ok(r),
                Err(e) if i + 1 < n && e.kind() != ErrorKind::InvalidArgument => {
                    tracing::warn!(image = %reference, endpoint = %label, error = %scrub(&e.to_string(), creds), "endpoint failed; trying the next");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| PullError::Internal("no registry endpoint".into())))
    }

    async fn pull_from(
        &self,
        ep: &EndpointClient,
        reference: &ImageRef,
        lease: &Lease,
        progress: &Arc<Progress>,
    ) -> Result<ImageRecord, PullError> {
        let host = ep.endpoint.host.clone();
        let oref = match &reference.digest {
            Some(d) => Reference::with_digest(host.clone(), reference.path.clone(), d.to_string()),
            None => Reference::with_tag(
                host.clone(),
                reference.path.clone(),
                reference.tag.clone().unwrap_or_else(|| "latest".into()),
            ),
        };
        let (top_bytes, top_digest) = self
            .fetch_manifest(ep, &oref, reference.digest.as_ref(), "manifest")
            .await?;
        let (index_digest, manifest_bytes, manifest_digest, manifest) =
            match manifest::parse_document(&top_bytes, None)? {
                Document::Manifest(m) => (None, top_bytes.clone(), top_digest.clone(), m),
                Document::Index(idx) => {
                    let desc = manifest::select_platform(&idx, &self.platform)?;
                    if desc.size > MAX_MANIFEST {
                        return Err(PullError::TooLarge {
                            what: "manifest",
                            digest: desc.digest.to_string(),
                            size: desc.size,
                            limit: MAX_MANIFEST,
                        });
                    }
                    let mref = oref.clone_with_digest(desc.digest.to_string());
                    let (bytes, d) = self
                        .fetch_manifest(ep, &mref, Some(&desc.digest), "platform manifest")
                        .await?;
                    let m = match manifest::parse_document(&bytes, None)? {
                        Document::Manifest(m) => m,
                        Document::Index(_) => {
                            return Err(ManifestError::Invalid(
                                "an index entry points at another index".into(),
                            )
                            .into());
                        }
                    };
                    (Some(top_digest.clone()), bytes, d, m)
                }
            };
        // Keep what we fetched: manifests and index are blobs like any other.
        for d in index_digest.iter().chain([&manifest_digest]) {
            lease.add(d.to_string());
        }
        if let Some(i) = &index_digest {
            self.put_blob(i, &top_bytes).await?;
        }
        self.put_blob(&manifest_digest, &manifest_bytes).await?;

        // The config.
        let cdesc = &manifest.config;
        if cdesc.size > MAX_CONFIG {
            return Err(PullError::TooLarge {
                what: "image config",
                digest: cdesc.digest.to_string(),
                size: cdesc.size,
                limit: MAX_CONFIG,
            });
        }
        lease.add(cdesc.digest.to_string());
        if !self.content.exists(&cdesc.digest) {
            self.fetch_blob(ep, &oref, cdesc, None, progress).await?;
        }
        let config_bytes = {
            let content = self.content.clone();
            let d = cdesc.digest.clone();
            blocking(move || content.read(&d, MAX_CONFIG)).await??
        };
        let config = manifest::parse_config(&config_bytes, manifest.layers.len())?;
        crate::fail_point!("pull.blobs_fetched");
        let layers = layer_records(&manifest, &config.diff_ids);
        for l in &layers {
            lease.add(l.digest.to_string());
            lease.add(l.chain_id.to_string());
        }
        progress
            .total
            .store(layers.iter().map(|l| l.size).sum(), Ordering::Relaxed);

        // Layers, in parallel.
        let sem = Arc::new(tokio::sync::Semaphore::new(
            self.max_concurrent_downloads.max(1),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, layer) in layers.iter().cloned().enumerate() {
            let parent = i.checked_sub(1).map(|p| layers[p].chain_id.clone());
            let this = self.clone();
            let sem = sem.clone();
            let oref = oref.clone();
            let ep = ep.clone();
            let progress = progress.clone();
            tasks.spawn(async move {
                let _permit = sem
                    .acquire_owned()
                    .await
                    .map_err(|e| PullError::Internal(e.to_string()))?;
                let span = tracing::debug_span!("layer", digest = %layer.digest, size = layer.size);
                this.ensure_layer(&ep, &oref, &layer, parent, &progress)
                    .instrument(span)
                    .await
            });
        }
        let mut first_err = None;
        while let Some(r) = tasks.join_next().await {
            let r = r
                .map_err(|e| PullError::Internal(format!("layer task: {e}")))
                .and_then(|x| x);
            if let Err(e) = r
                && first_err.is_none()
            {
                first_err = Some(e);
                tasks.abort_all();
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        crate::fail_point!("pull.layers_unpacked");

        let repo_digest = reference.with_digest(index_digest.as_ref().unwrap_or(&manifest_digest));
        let rec = image_record(
            reference.tagged().into_iter().collect(),
            vec![repo_digest],
            index_digest,
            (manifest_digest, &manifest, manifest_bytes.len() as u64),
            layers,
            &config,
        );
        crate::fail_point!("pull.before_record");
        let db = self.db.clone();
        Ok(blocking(move || db.image_put(rec)).await??)
    }

    async fn put_blob(&self, d: &Digest, bytes: &[u8]) -> Result<(), PullError> {
        let content = self.content.clone();
        let d = d.clone();
        let bytes = bytes.to_vec();
        blocking(move || content.put(&d, &bytes)).await??;
        Ok(())
    }

    /// Fetches a manifest or index, bounded and verified.
    async fn fetch_manifest(
        &self,
        ep: &EndpointClient,
        oref: &Reference,
        expected: Option<&Digest>,
        what: &'static str,
    ) -> Result<(Vec<u8>, Digest), PullError> {
        let bytes = fetch_bounded(ep, oref, what).await?;
        let actual = Digest::of(&bytes);
        if let Some(exp) = expected
            && &actual != exp
        {
            return Err(PullError::DigestMismatch {
                what,
                expected: exp.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok((bytes.to_vec(), actual))
    }
}

/// The layer records of a manifest whose config lists `diff_ids` (one per layer, checked
/// by `manifest::parse_config`).
pub(crate) fn layer_records(m: &manifest::Manifest, diff_ids: &[Digest]) -> Vec<LayerRecord> {
    let chain = manifest::chain_ids(diff_ids);
    m.layers
        .iter()
        .zip(diff_ids.iter().zip(chain))
        .map(|(l, (diff_id, chain_id))| LayerRecord {
            digest: l.blob.digest.clone(),
            size: l.blob.size,
            media_type: l.blob.media_type.clone(),
            compression: l.compression,
            diff_id: diff_id.clone(),
            chain_id,
        })
        .collect()
}

/// The record of an image whose blobs and layers are all in place.
pub(crate) fn image_record(
    repo_tags: Vec<String>,
    repo_digests: Vec<String>,
    index_digest: Option<Digest>,
    (manifest_digest, m, manifest_size): (Digest, &manifest::Manifest, u64),
    layers: Vec<LayerRecord>,
    config: &manifest::ImageConfig,
) -> ImageRecord {
    ImageRecord {
        schema_version: RECORD_VERSION,
        id: m.config.digest.clone(),
        repo_tags,
        repo_digests,
        index_digest,
        manifest_digest,
        manifest_media_type: m.media_type.clone(),
        manifest_size,
        config_size: m.config.size,
        layers,
        os: config.os.clone(),
        architecture: config.architecture.clone(),
        variant: config.variant.clone(),
        config: config.config.clone(),
        pulled_at: now_nanos(),
    }
}

/// GETs a manifest or index, never holding more than [`MAX_MANIFEST`] of it: refused on a
/// Content-Length over the limit before the body is read, and cut off at the limit
/// without one (oci-client's own manifest call reads whatever the registry sends).
async fn fetch_bounded(
    ep: &EndpointClient,
    oref: &Reference,
    what: &'static str,
) -> Result<Vec<u8>, PullError> {
    let host = &ep.endpoint.host;
    let fail = |kind: ErrorKind, message: String| PullError::Registry {
        endpoint: host.clone(),
        message,
        kind,
    };
    let too_large = |size: u64| PullError::TooLarge {
        what,
        digest: oref.to_string(),
        size,
        limit: MAX_MANIFEST,
    };
    let url = ep.manifest_url(oref);
    let mut req = ep
        .http
        .get(&url)
        .header(reqwest::header::ACCEPT, ACCEPT.join(", "));
    if let Some(a) = ep
        .authorization(oref)
        .await
        .map_err(|e| registry_error(host, e))?
    {
        req = req.header(reqwest::header::AUTHORIZATION, a);
    }
    let mut resp = req.send().await.map_err(|e| {
        fail(
            ErrorKind::Unavailable,
            format!("GET {url}: {}", error_chain(&e)),
        )
    })?;
    let status = resp.status();
    if !status.is_success() {
        let kind = match status.as_u16() {
            404 => ErrorKind::NotFound,
            401 | 403 => ErrorKind::PermissionDenied,
            _ => ErrorKind::Unavailable,
        };
        let mut body = Vec::new();
        while body.len() < 1024 {
            match resp.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                _ => break,
            }
        }
        body.truncate(1024);
        return Err(fail(
            kind,
            format!(
                "GET {url}: HTTP {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ),
        ));
    }
    if let Some(n) = resp.content_length()
        && n > MAX_MANIFEST
    {
        return Err(too_large(n));
    }
    let mut bytes = Vec::new();
    while let Some(c) = resp.chunk().await.map_err(|e| {
        fail(
            ErrorKind::Unavailable,
            format!("GET {url}: {}", error_chain(&e)),
        )
    })? {
        if (bytes.len() + c.len()) as u64 > MAX_MANIFEST {
            return Err(too_large((bytes.len() + c.len()) as u64));
        }
        bytes.extend_from_slice(&c);
    }
    Ok(bytes)
}

/// An error with its causes ("error sending request" alone does not say why).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

/// Runs blocking work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PullError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PullError::Internal(format!("blocking task: {e}")))
}

/// Removes secrets from a message.
fn scrub(msg: &str, creds: &Credentials) -> String {
    let mut out = msg.to_owned();
    for s in creds.secrets() {
        if !s.is_empty() {
            out = out.replace(s, "<redacted>");
        }
    }
    out
}

/// Classifies an oci-client error, keeping the registry's own message.
fn registry_error(host: &str, e: OciDistributionError) -> PullError {
    let kind = match &e {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => ErrorKind::PermissionDenied,
        OciDistributionError::ImageManifestNotFoundError(_) => ErrorKind::NotFound,
        OciDistributionError::RegistryError { envelope, .. } => {
            if envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                ErrorKind::NotFound
            } else if envelope
                .errors
                .iter()
                .any(|x| matches!(x.code, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                ErrorKind::PermissionDenied
            } else {
                ErrorKind::Unavailable
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => ErrorKind::NotFound,
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => ErrorKind::PermissionDenied,
        OciDistributionError::DigestError(_) => ErrorKind::DataLoss,
        _ => ErrorKind::Unavailable,
    };
    // Keep the causes: "error sending request" alone does not tell an operator why.
    let message = error_chain(&e);
    PullError::Registry {
        endpoint: host.to_owned(),
        message,
        kind,
    }
}

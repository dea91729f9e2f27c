//! Layers: a blob streamed from the registry into the content store and, at the same
//! time, unpacked into a fresh snapshot; the snapshot is committed only when both the
//! blob digest and the uncompressed diff_id check out.

use std::io::{self, Read};
use std::sync::Arc;

use sha2::Digest as _;

use super::*;

/// How often a layer being unpacked with `sync_layers` is flushed in the background.
const LAYER_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

impl Puller {
    /// Makes sure a layer's blob and unpacked snapshot exist.
    pub(super) async fn ensure_layer(
        &self,
        ep: &EndpointClient,
        oref: &Reference,
        layer: &LayerRecord,
        parent: Option<Digest>,
        progress: &Arc<Progress>,
    ) -> Result<(), PullError> {
        let _guard = self.inflight.lock(layer.chain_id.as_str()).await;
        let have_blob = self.content.exists(&layer.digest);
        let have_snapshot = self.snapshots.exists(&layer.chain_id)
            && self.db.snapshot_get(&layer.chain_id)?.is_some();
        if have_blob && have_snapshot {
            return Ok(());
        }
        let desc = manifest::Blob {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: layer.size,
        };
        let unpack = (!have_snapshot).then(|| (layer.clone(), parent));
        if have_blob {
            let Some((layer, parent)) = unpack else {
                return Ok(());
            };
            return self.unpack_from_store(layer, parent).await;
        }
        self.fetch_blob(ep, oref, &desc, unpack, progress).await
    }

    /// Makes sure the snapshot of a layer whose blob is in the content store exists (an
    /// imported archive's layers).
    pub(crate) async fn ensure_local_layer(
        &self,
        layer: &LayerRecord,
        parent: Option<Digest>,
    ) -> Result<(), PullError> {
        let _guard = self.inflight.lock(layer.chain_id.as_str()).await;
        if self.snapshots.exists(&layer.chain_id)
            && self.db.snapshot_get(&layer.chain_id)?.is_some()
        {
            return Ok(());
        }
        self.unpack_from_store(layer.clone(), parent).await
    }

    /// Unpacks a layer from its local blob (the caller holds the layer's in-flight lock).
    async fn unpack_from_store(
        &self,
        layer: LayerRecord,
        parent: Option<Digest>,
    ) -> Result<(), PullError> {
        let this = self.clone();
        blocking(move || {
            let file = this.content.open_blob(&layer.digest)?;
            let tmp = this.apply_layer(io::BufReader::new(file), &layer)?;
            this.commit_layer(tmp, &layer, parent)
        })
        .await?
    }

    /// Streams a blob from the registry into the content store, unpacking it on the way
    /// when `unpack` is given.
    pub(super) async fn fetch_blob(
        &self,
        ep: &EndpointClient,
        oref: &Reference,
        desc: &manifest::Blob,
        unpack: Option<(LayerRecord, Option<Digest>)>,
        progress: &Arc<Progress>,
    ) -> Result<(), PullError> {
        let odesc = OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.to_string(),
            size: i64::try_from(desc.size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        let mut stream = ep
            .client
            .pull_blob_stream(oref, &odesc)
            .await
            .map_err(|e| registry_error(&ep.endpoint.host, e))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(16);
        let this = self.clone();
        let d = desc.clone();
        let worker = tokio::task::spawn_blocking(move || {
            let reader = ChannelReader::new(rx);
            this.store_and_unpack(reader, &d, unpack)
        });
        let size = desc.size;
        let mut received = 0u64;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => {
                    received += b.len() as u64;
                    progress.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                    // Backpressure: the bounded channel waits while the writer is behind.
                    if tx.send(Ok(b)).await.is_err() {
                        break;
                    }
                }
                // oci-client checks the digest too and reports a mismatch at the end of the
                // stream; berth's own check in the content store classifies it.
                Err(_) if received >= size => break,
                Err(e) => {
                    let _ = tx
                        .send(Err(io::Error::other(format!(
                            "registry {}: download interrupted after {received} of {size} bytes: {e}",
                            ep.endpoint.host
                        ))))
                        .await;
                    break;
                }
            }
        }
        drop(tx);
        worker
            .await
            .map_err(|e| PullError::Internal(format!("unpack task: {e}")))?
    }

    /// Blocking: writes the blob into the content store and, if asked, unpacks it.
    fn store_and_unpack<R: Read>(
        &self,
        reader: R,
        desc: &manifest::Blob,
        unpack: Option<(LayerRecord, Option<Digest>)>,
    ) -> Result<(), PullError> {
        let mut ingest = self
            .content
            .writer(&desc.digest, Some(desc.size), desc.size)?;
        let mut tee = Tee {
            inner: reader,
            ingest: &mut ingest,
            failed: None,
        };
        let outcome = unpack
            .as_ref()
            .map(|(layer, _)| self.apply_layer(&mut tee, layer));
        // Hash what remains of the blob (past the tar's end), so its digest is checked.
        let drained = io::copy(&mut tee, &mut io::sink());
        if let Some(e) = tee.failed.take() {
            return Err(e.into());
        }
        if let Err(e) = drained {
            return Err(PullError::Registry {
                endpoint: String::from("download"),
                message: e.to_string(),
                kind: ErrorKind::Unavailable,
            });
        }
        // The blob's digest decides first: a corrupt download is DataLoss, whatever the
        // unpack made of it.
        ingest.commit()?;
        let Some((layer, parent)) = unpack else {
            return Ok(());
        };
        let Some(outcome) = outcome else {
            return Ok(());
        };
        match outcome {
            Ok(tmp) => self.commit_layer(tmp, &layer, parent),
            Err(e) => {
                // Leave nothing of a refused layer, not even its (valid) blob.
                let _ = self.content.delete(&desc.digest);
                Err(e)
            }
        }
    }

    /// Decompresses and applies a layer into a fresh tmp snapshot, checking its diff_id.
    fn apply_layer<R: Read>(
        &self,
        reader: R,
        layer: &LayerRecord,
    ) -> Result<crate::snapshots::TmpSnapshot, PullError> {
        let tmp = self.snapshots.prepare()?;
        let decompressed: Box<dyn Read> = match layer.compression {
            LayerCompression::None => Box::new(reader),
            LayerCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
            LayerCompression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(reader).map_err(|e| {
                    PullError::Apply {
                        layer: layer.digest.clone(),
                        source: ApplyError::Corrupt(format!("zstd: {e}")),
                    }
                })?)
            }
        };
        let mut hashing = HashingReader {
            inner: decompressed,
            hasher: sha2::Sha256::new(),
        };
        // With sync_layers, the data starts for the disk while the layer unpacks.
        let flush = self
            .sync_layers
            .then(|| crate::snapshots::BackgroundFlush::start(&tmp.fs(), LAYER_FLUSH_EVERY));
        let applied = apply::apply(&mut hashing, &tmp.fs(), self.limits);
        drop(flush);
        applied.map_err(|source| PullError::Apply {
            layer: layer.digest.clone(),
            source,
        })?;
        let diff = Digest::from_sha256(hashing.hasher.finalize().into());
        if diff != layer.diff_id {
            return Err(PullError::DiffIdMismatch {
                layer: layer.digest.clone(),
                expected: layer.diff_id.clone(),
                actual: diff,
            });
        }
        Ok(tmp)
    }

    fn commit_layer(
        &self,
        tmp: crate::snapshots::TmpSnapshot,
        layer: &LayerRecord,
        parent: Option<Digest>,
    ) -> Result<(), PullError> {
        let usage = self
            .snapshots
            .commit(tmp, &layer.chain_id, self.sync_layers)?;
        self.db.snapshot_put(&SnapshotRecord {
            schema_version: RECORD_VERSION,
            chain_id: layer.chain_id.clone(),
            parent,
            diff_id: layer.diff_id.clone(),
            usage,
            created_at: now_nanos(),
        })?;
        Ok(())
    }
}

/// A blocking reader of bytes an async side sends (a download, a streamed upload).
#[derive(Debug)]
pub struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>,
    buf: bytes::Bytes,
}

impl ChannelReader {
    pub fn new(rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>) -> ChannelReader {
        ChannelReader {
            rx,
            buf: bytes::Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.buf = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        let _ = self.buf.split_to(n);
        Ok(n)
    }
}

/// Copies everything read into the content store's ingest.
struct Tee<'a, 'b, R> {
    inner: R,
    ingest: &'a mut crate::content::Ingest<'b>,
    failed: Option<ContentError>,
}

impl<R: Read> Read for Tee<'_, '_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        if let Err(e) = self.ingest.write_chunk(&out[..n]) {
            let msg = e.to_string();
            self.failed = Some(e);
            return Err(io::Error::other(msg));
        }
        Ok(n)
    }
}

/// Hashes what passes through.
struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.hasher.update(&out[..n]);
        Ok(n)
    }
}

//! berth's own image service (`berth.images.v1.Images`): image archive import and export
//! for `berthd image …`, on the CRI socket. Thin: stream bytes in or out, one engine call.

use std::io::Write;
use std::sync::Arc;

use berth_engine::Engine;
use berth_engine::images::pull::ChannelReader;
use berth_proto::images::images_server::Images;
use berth_proto::images::*;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::status::to_status;

/// Bytes per export chunk (well under gRPC's default 4 MiB message limit).
const CHUNK: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct ArchiveHandlers {
    engine: Arc<Engine>,
}

impl ArchiveHandlers {
    pub fn new(engine: Arc<Engine>) -> Self {
        ArchiveHandlers { engine }
    }
}

/// A blocking writer that sends what it is given as export chunks.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Result<ExportChunk, Status>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(ExportChunk { data }))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = b.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

#[tonic::async_trait]
impl Images for ArchiveHandlers {
    async fn import(
        &self,
        req: Request<Streaming<ImportRequest>>,
    ) -> Result<Response<ImportResponse>, Status> {
        let mut stream = req.into_inner();
        let first = stream.next().await.transpose()?.unwrap_or_default();
        let tag = first.tag.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
        // Feed the blocking importer; it reads until the client's stream ends.
        let feeder = tokio::spawn(async move {
            if !first.data.is_empty() && tx.send(Ok(first.data.into())).await.is_err() {
                return;
            }
            while let Some(m) = stream.next().await {
                let item = m.map(|m| bytes::Bytes::from(m.data)).map_err(|s| {
                    std::io::Error::other(format!("upload interrupted: {}", s.message()))
                });
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        let imported = self
            .engine
            .import_images(ChannelReader::new(rx), Some(tag.as_str()))
            .await;
        feeder.abort();
        let images = imported
            .map_err(to_status)?
            .into_iter()
            .map(|i| ImportedImage {
                size: i.record.size(),
                id: i.record.id.to_string(),
                repo_tags: i.record.repo_tags,
                repo_digests: i.record.repo_digests,
            })
            .collect();
        Ok(Response::new(ImportResponse { images }))
    }

    type ExportStream = ReceiverStream<Result<ExportChunk, Status>>;

    async fn export(
        &self,
        req: Request<ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let images = req.into_inner().images;
        // Refuse unknown names before the stream starts, so the client gets a plain error.
        for i in &images {
            if self.engine.resolve_image(i).map_err(to_status)?.is_none() {
                return Err(Status::not_found(format!("image {i:?} not found")));
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let mut w = ChunkWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
            };
            if let Err(e) = engine.export_images(&images, &mut w) {
                let _ = tx.blocking_send(Err(to_status(e)));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

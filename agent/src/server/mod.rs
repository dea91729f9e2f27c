//! The CRI gRPC server on a unix socket.

pub mod archive;
pub mod convert;
mod events;
pub mod image;
pub mod layer;
pub mod lists;
pub mod runtime;
pub mod stats;
pub mod status;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_engine::Engine;
use berth_proto::cri::image_service_server::ImageServiceServer;
use berth_proto::cri::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("socket {0} is in use by a running server; stop it or choose another --listen")]
    InUse(PathBuf),
    #[error("socket {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the CRI socket: creates its parent directories, replaces a stale socket left by a
/// crash (one nobody answers on), refuses a live one, and sets mode 0660.
pub async fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io = |op: &'static str| {
        move |source| BindError::Io {
            path: path.to_owned(),
            op,
            source,
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("create parent dir"))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(BindError::Io {
                    path: path.to_owned(),
                    op: "check existing file",
                    source: std::io::Error::other(
                        "exists and is not a socket; refusing to replace it",
                    ),
                });
            }
            match tokio::net::UnixStream::connect(path).await {
                Ok(_) => return Err(BindError::InUse(path.to_owned())),
                Err(_) => {
                    tracing::info!(socket = %path.display(), "removing stale socket");
                    std::fs::remove_file(path).map_err(io("remove stale socket"))?;
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("stat")(e)),
    }
    let listener = UnixListener::bind(path).map_err(io("bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(io("chmod 0660"))?;
    Ok(listener)
}

/// Serves both CRI services until `shutdown` resolves, then lets in-flight calls finish for
/// at most `grace`.
pub async fn serve(
    listener: UnixListener,
    engine: Arc<Engine>,
    config_json: String,
    streaming: Arc<crate::streaming::Streaming>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), tonic::transport::Error> {
    let metrics = engine.metrics();
    let runtime = RuntimeServiceServer::new(runtime::RuntimeHandlers::new(
        engine.clone(),
        config_json,
        streaming,
    ))
    .max_decoding_message_size(16 << 20)
    .max_encoding_message_size(16 << 20);
    let archive = berth_proto::images::images_server::ImagesServer::new(
        archive::ArchiveHandlers::new(engine.clone()),
    );
    let image = ImageServiceServer::new(image::ImageHandlers::new(engine))
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (begun_tx, begun_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown.await;
        let _ = begun_tx.send(());
        let _ = stop_tx.send(());
    });
    let server = tonic::transport::Server::builder()
        .layer(layer::RpcLayer { metrics })
        .add_service(runtime)
        .add_service(image)
        .add_service(archive)
        .serve_with_incoming_shutdown(crate::http_guard::unix_incoming(listener), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tokio::select! {
        res = &mut server => return res,
        _ = begun_rx => {}
    }
    // Shutdown has begun: tonic stops accepting and drains; bound the wait.
    match tokio::time::timeout(grace, &mut server).await {
        Ok(res) => res,
        Err(_) => {
            tracing::warn!(
                grace_seconds = grace.as_secs(),
                "in-flight calls did not finish within the grace period"
            );
            Ok(())
        }
    }
}

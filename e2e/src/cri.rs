//! A typed CRI client over the daemon's unix socket.

use std::path::{Path, PathBuf};

use berth_proto::cri::image_service_client::ImageServiceClient;
use berth_proto::cri::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Both CRI services on one connection.
#[derive(Debug, Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub image: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects to a CRI unix socket.
    pub async fn connect(socket: &Path) -> Result<Cri, tonic::transport::Error> {
        let path: PathBuf = socket.to_owned();
        let channel = Endpoint::from_static("http://[::]:50051")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await?;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            image: ImageServiceClient::new(channel),
        })
    }
}

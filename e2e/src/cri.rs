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

use berth_proto::cri;

impl Cri {
    /// PullImage; returns the image id (image_ref).
    pub async fn pull(
        &mut self,
        image: &str,
        auth: Option<cri::AuthConfig>,
    ) -> Result<String, tonic::Status> {
        let r = self
            .image
            .pull_image(cri::PullImageRequest {
                image: Some(spec(image)),
                auth,
                sandbox_config: None,
            })
            .await?;
        Ok(r.into_inner().image_ref)
    }

    /// ImageStatus; the image (if berth has it) and, when verbose, the parsed info JSON.
    pub async fn image_status(
        &mut self,
        image: &str,
        verbose: bool,
    ) -> Result<(Option<cri::Image>, Option<serde_json::Value>), tonic::Status> {
        let r = self
            .image
            .image_status(cri::ImageStatusRequest {
                image: Some(spec(image)),
                verbose,
            })
            .await?
            .into_inner();
        let info = r
            .info
            .get("info")
            .map(|s| serde_json::from_str(s).expect("info is JSON"));
        Ok((r.image, info))
    }

    /// ListImages, optionally filtered.
    pub async fn list_images(
        &mut self,
        filter: Option<&str>,
    ) -> Result<Vec<cri::Image>, tonic::Status> {
        let r = self
            .image
            .list_images(cri::ListImagesRequest {
                filter: filter.map(|f| cri::ImageFilter {
                    image: Some(spec(f)),
                }),
            })
            .await?;
        Ok(r.into_inner().images)
    }

    pub async fn remove_image(&mut self, image: &str) -> Result<(), tonic::Status> {
        self.image
            .remove_image(cri::RemoveImageRequest {
                image: Some(spec(image)),
            })
            .await?;
        Ok(())
    }

    /// (image fs bytes, image fs inodes) from ImageFsInfo.
    pub async fn image_fs_usage(&mut self) -> Result<(u64, u64), tonic::Status> {
        let r = self
            .image
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await?
            .into_inner();
        let fs = r.image_filesystems.first().cloned().unwrap_or_default();
        Ok((
            fs.used_bytes.map(|v| v.value).unwrap_or_default(),
            fs.inodes_used.map(|v| v.value).unwrap_or_default(),
        ))
    }
}

/// An ImageSpec for a name.
pub fn spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.to_owned(),
        ..cri::ImageSpec::default()
    }
}

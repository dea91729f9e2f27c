//! ImageService: thin handlers. Validate the request, call one engine method, convert.

use std::sync::Arc;

use berth_engine::Engine;
use berth_proto::cri::image_service_server::ImageService;
use berth_proto::cri::*;
use tonic::{Request, Response, Status};

use super::status::unimplemented;

#[derive(Debug, Clone)]
pub struct ImageHandlers {
    #[allow(dead_code)]
    engine: Arc<Engine>,
}

impl ImageHandlers {
    pub fn new(engine: Arc<Engine>) -> Self {
        ImageHandlers { engine }
    }
}

#[tonic::async_trait]
impl ImageService for ImageHandlers {
    async fn list_images(
        &self,
        _req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        Err(unimplemented("ListImages"))
    }
    async fn image_status(
        &self,
        _req: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        Err(unimplemented("ImageStatus"))
    }
    async fn pull_image(
        &self,
        _req: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        Err(unimplemented("PullImage"))
    }
    async fn remove_image(
        &self,
        _req: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        Err(unimplemented("RemoveImage"))
    }
    async fn image_fs_info(
        &self,
        _req: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        Err(unimplemented("ImageFsInfo"))
    }
}

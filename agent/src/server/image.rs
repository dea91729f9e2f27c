//! ImageService: thin handlers. Validate the request, call one engine method, convert.

use std::collections::HashMap;
use std::sync::Arc;

use berth_engine::Engine;
use berth_engine::images::registry::Credentials;
use berth_engine::images::service::{FsUsage, ImageInfo};
use berth_proto::cri::image_service_server::ImageService;
use berth_proto::cri::*;
use tonic::{Request, Response, Status};

use super::status::to_status;

#[derive(Debug, Clone)]
pub struct ImageHandlers {
    engine: Arc<Engine>,
}

impl ImageHandlers {
    pub fn new(engine: Arc<Engine>) -> Self {
        ImageHandlers { engine }
    }

    /// Runs a short blocking engine call off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine) -> berth_engine::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || f(&engine))
            .await
            .map_err(|e| Status::internal(format!("engine task: {e}")))?
            .map_err(to_status)
    }
}

impl ImageHandlers {
    /// The images ListImages and StreamImages answer.
    async fn images(&self, filter: Option<ImageFilter>) -> Result<Vec<Image>, Status> {
        let filter = filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let images = self
            .blocking(move |e| e.list_images(filter.as_deref()))
            .await?;
        Ok(images.iter().map(to_cri).collect())
    }
}

fn image_name(spec: Option<&ImageSpec>, field: &str) -> Result<String, Status> {
    match spec.map(|s| s.image.trim()).filter(|s| !s.is_empty()) {
        Some(s) => Ok(s.to_owned()),
        None => Err(Status::invalid_argument(format!("{field}.image is empty"))),
    }
}

/// CRI AuthConfig -> engine credentials. Secrets never go into messages.
pub fn credentials(auth: Option<&AuthConfig>) -> Result<Credentials, Status> {
    let Some(a) = auth else {
        return Ok(Credentials::Anonymous);
    };
    if !a.username.is_empty() {
        return Ok(Credentials::Basic {
            username: a.username.clone(),
            password: a.password.clone(),
        });
    }
    if !a.auth.is_empty() {
        let decoded = base64_decode(a.auth.trim())
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| Status::invalid_argument("auth.auth is not base64 of user:password"))?;
        let (user, pass) = decoded.split_once(':').ok_or_else(|| {
            Status::invalid_argument("auth.auth does not decode to user:password")
        })?;
        return Ok(Credentials::Basic {
            username: user.to_owned(),
            password: pass.to_owned(),
        });
    }
    if !a.registry_token.is_empty() {
        return Ok(Credentials::RegistryToken(a.registry_token.clone()));
    }
    if !a.identity_token.is_empty() {
        return Ok(Credentials::IdentityToken(a.identity_token.clone()));
    }
    Ok(Credentials::Anonymous)
}

/// Standard base64, padded or not.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
        .ok()
}

/// The image's USER as CRI wants it: a numeric uid, or a user name.
fn user_of(user: &str) -> (Option<Int64Value>, String) {
    let name = user.split(':').next().unwrap_or_default();
    if name.is_empty() {
        return (None, String::new());
    }
    match name.parse::<i64>() {
        Ok(uid) => (Some(Int64Value { value: uid }), String::new()),
        Err(_) => (None, name.to_owned()),
    }
}

fn to_cri(info: &ImageInfo) -> Image {
    let r = &info.record;
    let (uid, username) = user_of(&r.config.user);
    Image {
        id: r.id.to_string(),
        repo_tags: r.repo_tags.clone(),
        repo_digests: r.repo_digests.clone(),
        size: r.size(),
        uid,
        username,
        spec: Some(ImageSpec {
            image: r.id.to_string(),
            ..ImageSpec::default()
        }),
        pinned: info.pinned,
    }
}

fn fs_usage(u: &FsUsage, now: i64) -> FilesystemUsage {
    FilesystemUsage {
        timestamp: now,
        fs_id: Some(FilesystemIdentifier {
            mountpoint: u.mountpoint.display().to_string(),
        }),
        used_bytes: Some(UInt64Value {
            value: u.usage.bytes,
        }),
        inodes_used: Some(UInt64Value {
            value: u.usage.inodes,
        }),
    }
}

#[tonic::async_trait]
impl ImageService for ImageHandlers {
    async fn list_images(
        &self,
        req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let images = self.images(req.into_inner().filter).await?;
        Ok(Response::new(ListImagesResponse { images }))
    }

    type StreamImagesStream = super::lists::ListStream<StreamImagesResponse>;

    async fn stream_images(
        &self,
        req: Request<StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let images = self.images(req.into_inner().filter).await?;
        Ok(Response::new(super::lists::chunked(images, |images| {
            StreamImagesResponse { images }
        })))
    }

    async fn image_status(
        &self,
        req: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let req = req.into_inner();
        let name = image_name(req.image.as_ref(), "image")?;
        let engine = self.engine.clone();
        let found = self.blocking(move |e| e.image_status(&name)).await?;
        let Some(info) = found else {
            return Ok(Response::new(ImageStatusResponse::default()));
        };
        let mut extra = HashMap::new();
        if req.verbose {
            let r = &info.record;
            let layers: Vec<_> = r
                .layers
                .iter()
                .map(|l| {
                    serde_json::json!({
                        "digest": l.digest, "size": l.size, "mediaType": l.media_type,
                        "diffID": l.diff_id, "chainID": l.chain_id,
                        "snapshot": engine.snapshot_dir(&l.chain_id),
                    })
                })
                .collect();
            let v = serde_json::json!({
                "id": r.id,
                "manifestDigest": r.manifest_digest,
                "indexDigest": r.index_digest,
                "manifestMediaType": r.manifest_media_type,
                "size": r.size(),
                "platform": {"os": r.os, "architecture": r.architecture, "variant": r.variant},
                "chainID": r.layers.last().map(|l| &l.chain_id),
                "layers": layers,
                "config": r.config,
                "pulledAt": r.pulled_at,
            });
            extra.insert("info".to_owned(), v.to_string());
        }
        Ok(Response::new(ImageStatusResponse {
            image: Some(to_cri(&info)),
            info: extra,
        }))
    }

    async fn pull_image(
        &self,
        req: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let req = req.into_inner();
        let name = image_name(req.image.as_ref(), "image")?;
        let creds = credentials(req.auth.as_ref())?;
        let info = self
            .engine
            .pull_image(&name, &creds)
            .await
            .map_err(to_status)?;
        Ok(Response::new(PullImageResponse {
            image_ref: info.record.id.to_string(),
        }))
    }

    async fn remove_image(
        &self,
        req: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let name = image_name(req.get_ref().image.as_ref(), "image")?;
        self.blocking(move |e| e.remove_image(&name)).await?;
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _req: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        let info = self.blocking(|e| e.image_fs_info()).await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![fs_usage(&info.image, now)],
            container_filesystems: vec![fs_usage(&info.container, now)],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_forms() {
        let a = AuthConfig {
            auth: "YmVydGg6czNjcmV0".into(),
            ..AuthConfig::default()
        };
        assert_eq!(
            credentials(Some(&a)).unwrap(),
            Credentials::Basic {
                username: "berth".into(),
                password: "s3cret".into()
            }
        );
        let a = AuthConfig {
            username: "u".into(),
            password: "p:q".into(),
            ..AuthConfig::default()
        };
        assert!(matches!(
            credentials(Some(&a)).unwrap(),
            Credentials::Basic { .. }
        ));
        let a = AuthConfig {
            registry_token: "t".into(),
            ..AuthConfig::default()
        };
        assert_eq!(
            credentials(Some(&a)).unwrap(),
            Credentials::RegistryToken("t".into())
        );
        let a = AuthConfig {
            auth: "!!!".into(),
            ..AuthConfig::default()
        };
        let e = credentials(Some(&a)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(!e.message().contains("!!!"));
        assert_eq!(credentials(None).unwrap(), Credentials::Anonymous);
    }

    #[test]
    fn base64_and_users() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert!(base64_decode("a").is_none());
        assert_eq!(user_of("1000:1000").0.unwrap().value, 1000);
        assert_eq!(user_of("berth").1, "berth");
        assert_eq!(user_of(""), (None, String::new()));
    }
}

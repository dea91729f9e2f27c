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

/// Pods and containers.
impl Cri {
    /// RunPodSandbox; the pod's id.
    pub async fn run_pod(&mut self, config: cri::PodSandboxConfig) -> String {
        self.try_run_pod(config).await.expect("RunPodSandbox")
    }

    /// RunPodSandbox, for tests of refusals.
    pub async fn try_run_pod(
        &mut self,
        config: cri::PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        Ok(self
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id)
    }

    /// PodSandboxStatus (not verbose).
    pub async fn pod_status(&mut self, id: &str) -> cri::PodSandboxStatus {
        self.runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner()
            .status
            .expect("status")
    }

    /// The pod's addresses as PodSandboxStatus reports them, primary first.
    pub async fn pod_ips(&mut self, id: &str) -> Vec<String> {
        let net = self.pod_status(id).await.network.unwrap_or_default();
        std::iter::once(net.ip)
            .filter(|ip| !ip.is_empty())
            .chain(net.additional_ips.into_iter().map(|p| p.ip))
            .collect()
    }

    /// StopPodSandbox then RemovePodSandbox.
    pub async fn stop_and_remove_pod(&mut self, id: &str) {
        self.runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .expect("StopPodSandbox");
        self.runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .expect("RemovePodSandbox");
    }

    /// CreateContainer.
    pub async fn create(
        &mut self,
        pod: &str,
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        Ok(self
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config),
                sandbox_config: None,
            })
            .await?
            .into_inner()
            .container_id)
    }

    /// StartContainer.
    pub async fn start(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .map(|_| ())
    }

    /// CreateContainer then StartContainer; the container's id.
    pub async fn run_container(&mut self, pod: &str, config: cri::ContainerConfig) -> String {
        let id = self.create(pod, config).await.expect("CreateContainer");
        self.start(&id).await.expect("StartContainer");
        id
    }

    /// ContainerStatus (not verbose).
    pub async fn status(&mut self, id: &str) -> cri::ContainerStatus {
        self.runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("status")
    }

    /// ContainerStatus's verbose `info` (berth's JSON: pid, cgroup, runtimeSpec …).
    pub async fn verbose_info(&mut self, id: &str) -> serde_json::Value {
        let r = self
            .runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            })
            .await
            .expect("ContainerStatus")
            .into_inner();
        serde_json::from_str(&r.info["info"]).expect("verbose info is JSON")
    }

    /// ListContainers without a filter.
    pub async fn containers(&mut self) -> Vec<cri::Container> {
        self.runtime
            .list_containers(cri::ListContainersRequest::default())
            .await
            .expect("ListContainers")
            .into_inner()
            .containers
    }

    /// Polls until the container has exited (10 s at most).
    pub async fn wait_exited(&mut self, id: &str) -> cri::ContainerStatus {
        for _ in 0..500 {
            let s = self.status(id).await;
            if s.state == cri::ContainerState::ContainerExited as i32 {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("container {id} did not exit");
    }

    /// Status's conditions (RuntimeReady, NetworkReady).
    pub async fn conditions(&mut self) -> Vec<cri::RuntimeCondition> {
        self.runtime
            .status(cri::StatusRequest { verbose: false })
            .await
            .expect("Status")
            .into_inner()
            .status
            .expect("status")
            .conditions
    }

    /// ExecSync.
    pub async fn exec(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, tonic::Status> {
        Ok(self
            .runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            })
            .await?
            .into_inner())
    }
}

/// Puts a pod config in the node's network namespace (hostNetwork).
/// A pod config with metadata and a log directory under `logs`, nothing else (what crictl's
/// minimal pod file has).
pub fn pod_config(namespace: &str, name: &str, logs: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: namespace.into(),
            attempt: 0,
        }),
        log_directory: logs.join(name).display().to_string(),
        ..Default::default()
    }
}

pub fn use_host_network(config: &mut cri::PodSandboxConfig) {
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
}

/// Gives a pod config a user namespace mapping container ids 0.. to host ids
/// `host_id`.. (`length` of them), for users and groups alike.
pub fn with_user_namespace(config: &mut cri::PodSandboxConfig, host_id: u32, length: u32) {
    let mapping = vec![cri::IdMapping {
        container_id: 0,
        host_id,
        length,
    }];
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                userns_options: Some(cri::UserNamespace {
                    mode: cri::NamespaceMode::Pod as i32,
                    uids: mapping.clone(),
                    gids: mapping,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
}

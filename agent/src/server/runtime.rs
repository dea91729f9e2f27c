//! RuntimeService: thin handlers. Validate the request, call one engine method, convert.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use berth_engine::{CgroupDriver, Engine};
use berth_proto::cri::runtime_service_server::RuntimeService;
use berth_proto::cri::*;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::status::{to_status, unimplemented};

/// The CRI API version berth serves.
pub const RUNTIME_API_VERSION: &str = "v1";

#[derive(Debug, Clone)]
pub struct RuntimeHandlers {
    engine: Arc<Engine>,
    /// The effective configuration, as JSON, for verbose Status.
    config_json: Arc<String>,
}

impl RuntimeHandlers {
    pub fn new(engine: Arc<Engine>, config_json: String) -> Self {
        RuntimeHandlers {
            engine,
            config_json: Arc::new(config_json),
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<ContainerEventResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeService for RuntimeHandlers {
    type GetContainerEventsStream = EventStream;

    async fn version(
        &self,
        req: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        // The request's version is the client's; the CRI comment says it is informational.
        tracing::debug!(client_version = %req.get_ref().version, "version");
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "berth".into(),
            runtime_version: berth_engine::VERSION.into(),
            runtime_api_version: RUNTIME_API_VERSION.into(),
        }))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let conditions = self
            .engine
            .conditions()
            .into_iter()
            .map(|c| RuntimeCondition {
                r#type: c.kind.to_owned(),
                status: c.status,
                reason: c.reason,
                message: c.message,
            })
            .collect();
        let mut info = HashMap::new();
        if req.get_ref().verbose {
            info.insert("config".to_owned(), self.config_json.as_ref().clone());
            info.insert("engine".to_owned(), self.engine.verbose_info().to_string());
        }
        Ok(Response::new(StatusResponse {
            status: Some(RuntimeStatus { conditions }),
            info,
            runtime_handlers: vec![RuntimeHandler {
                name: String::new(),
                features: Some(RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                }),
            }],
            features: Some(RuntimeFeatures {
                supplemental_groups_policy: false,
            }),
        }))
    }

    async fn runtime_config(
        &self,
        _req: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        let driver = match self.engine.cgroup_driver() {
            CgroupDriver::Cgroupfs => berth_proto::cri::CgroupDriver::Cgroupfs,
            CgroupDriver::Systemd => berth_proto::cri::CgroupDriver::Systemd,
        };
        Ok(Response::new(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: driver as i32,
            }),
        }))
    }

    async fn update_runtime_config(
        &self,
        req: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        let cidr = req
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.update_pod_cidr(&cidr))
            .await
            .map_err(|e| Status::internal(format!("update pod CIDR task: {e}")))?
            .map_err(to_status)?;
        Ok(Response::new(UpdateRuntimeConfigResponse {}))
    }

    async fn run_pod_sandbox(
        &self,
        _req: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        Err(unimplemented("RunPodSandbox"))
    }
    async fn stop_pod_sandbox(
        &self,
        _req: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        Err(unimplemented("StopPodSandbox"))
    }
    async fn remove_pod_sandbox(
        &self,
        _req: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        Err(unimplemented("RemovePodSandbox"))
    }
    async fn pod_sandbox_status(
        &self,
        _req: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        Err(unimplemented("PodSandboxStatus"))
    }
    async fn list_pod_sandbox(
        &self,
        _req: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        Err(unimplemented("ListPodSandbox"))
    }
    async fn create_container(
        &self,
        _req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        Err(unimplemented("CreateContainer"))
    }
    async fn start_container(
        &self,
        _req: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        Err(unimplemented("StartContainer"))
    }
    async fn stop_container(
        &self,
        _req: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        Err(unimplemented("StopContainer"))
    }
    async fn remove_container(
        &self,
        _req: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        Err(unimplemented("RemoveContainer"))
    }
    async fn list_containers(
        &self,
        _req: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        Err(unimplemented("ListContainers"))
    }
    async fn container_status(
        &self,
        _req: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        Err(unimplemented("ContainerStatus"))
    }
    async fn update_container_resources(
        &self,
        _req: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        Err(unimplemented("UpdateContainerResources"))
    }
    async fn reopen_container_log(
        &self,
        _req: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        Err(unimplemented("ReopenContainerLog"))
    }
    async fn exec_sync(
        &self,
        _req: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        Err(unimplemented("ExecSync"))
    }
    async fn exec(&self, _req: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        Err(unimplemented("Exec"))
    }
    async fn attach(
        &self,
        _req: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        Err(unimplemented("Attach"))
    }
    async fn port_forward(
        &self,
        _req: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        Err(unimplemented("PortForward"))
    }
    async fn container_stats(
        &self,
        _req: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        Err(unimplemented("ContainerStats"))
    }
    async fn list_container_stats(
        &self,
        _req: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        Err(unimplemented("ListContainerStats"))
    }
    async fn pod_sandbox_stats(
        &self,
        _req: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        Err(unimplemented("PodSandboxStats"))
    }
    async fn list_pod_sandbox_stats(
        &self,
        _req: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        Err(unimplemented("ListPodSandboxStats"))
    }
    async fn checkpoint_container(
        &self,
        _req: Request<CheckpointContainerRequest>,
    ) -> Result<Response<CheckpointContainerResponse>, Status> {
        Err(unimplemented("CheckpointContainer"))
    }
    async fn get_container_events(
        &self,
        _req: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Err(unimplemented("GetContainerEvents"))
    }
    async fn list_metric_descriptors(
        &self,
        _req: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        Err(unimplemented("ListMetricDescriptors"))
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        Err(unimplemented("ListPodSandboxMetrics"))
    }
}

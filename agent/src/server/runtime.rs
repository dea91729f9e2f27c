//! RuntimeService: thin handlers. Validate the request, call one engine method, convert.

use std::collections::HashMap;
use std::sync::Arc;

use berth_engine::{CgroupDriver, Engine};
use berth_proto::cri::runtime_service_server::RuntimeService;
use berth_proto::cri::*;
use tonic::{Request, Response, Status};

use super::status::to_status;
use super::{convert, lists, stats};

/// A required id field, or InvalidArgument naming it.
fn required<'a>(v: &'a str, field: &str) -> Result<&'a str, Status> {
    if v.is_empty() {
        Err(Status::invalid_argument(format!("{field} is empty")))
    } else {
        Ok(v)
    }
}

/// Runs file-reading engine work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> berth_engine::error::Result<T> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("task failed: {e}")))?
        .map_err(to_status)
}

/// Runs blocking work that answers with a Status off the async threads.
async fn blocking_status<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("task failed: {e}")))?
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The CRI API version berth serves.
pub const RUNTIME_API_VERSION: &str = "v1";

#[derive(Debug, Clone)]
pub struct RuntimeHandlers {
    engine: Arc<Engine>,
    /// The effective configuration, as JSON, for verbose Status.
    config_json: Arc<String>,
    /// Where Exec, Attach and PortForward URLs lead.
    streaming: Arc<crate::streaming::Streaming>,
}

impl RuntimeHandlers {
    pub fn new(
        engine: Arc<Engine>,
        config_json: String,
        streaming: Arc<crate::streaming::Streaming>,
    ) -> Self {
        RuntimeHandlers {
            engine,
            config_json: Arc::new(config_json),
            streaming,
        }
    }

    /// Streams go to running containers only, and need something to carry: refused at the
    /// call, not at the connection (Exec and Attach alike).
    fn check_stream_request(
        &self,
        id: &str,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    ) -> Result<(), Status> {
        if !(stdin || stdout || stderr) {
            return Err(Status::invalid_argument(
                "one of stdin, stdout and stderr must be set",
            ));
        }
        if tty && stderr {
            return Err(Status::invalid_argument(
                "tty and stderr cannot both be set: a terminal has one output stream",
            ));
        }
        self.engine.running_container(id).map_err(to_status)?;
        Ok(())
    }

    fn stream_url(&self, req: crate::streaming::cache::StreamRequest) -> Result<String, Status> {
        self.streaming
            .url(req)
            .map_err(|e| Status::resource_exhausted(e.to_string()))
    }
}

#[tonic::async_trait]
impl RuntimeService for RuntimeHandlers {
    type GetContainerEventsStream = super::events::EventStream;

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
        let kernel = self.engine.config().kernel;
        let mut info = HashMap::new();
        if req.get_ref().verbose {
            info.insert("config".to_owned(), self.config_json.as_ref().clone());
            info.insert("engine".to_owned(), self.engine.verbose_info().to_string());
        }
        Ok(Response::new(StatusResponse {
            status: Some(RuntimeStatus { conditions }),
            info,
            // What this node can do, as found at start-up: clients (kubelet, critest) skip
            // what is not listed.
            runtime_handlers: vec![RuntimeHandler {
                name: String::new(),
                features: Some(RuntimeHandlerFeatures {
                    recursive_read_only_mounts: kernel.recursive_read_only,
                    user_namespaces: kernel.idmapped_mounts,
                }),
            }],
            features: Some(RuntimeFeatures {
                supplemental_groups_policy: true,
                // A pod in a user namespace needs its own network namespace in berth.
                user_namespaces_host_network: false,
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

    async fn run_pod_sandbox(
        &self,
        req: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        let req = req.into_inner();
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let id = self
            .engine
            .run_pod(&convert::pod_config(&config), &req.runtime_handler)
            .await
            .map_err(to_status)?;
        Ok(Response::new(RunPodSandboxResponse { pod_sandbox_id: id }))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        let id = required(&req.get_ref().pod_sandbox_id, "pod_sandbox_id")?;
        self.engine.stop_pod(id).await.map_err(to_status)?;
        Ok(Response::new(StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        let id = required(&req.get_ref().pod_sandbox_id, "pod_sandbox_id")?;
        self.engine.remove_pod(id).await.map_err(to_status)?;
        Ok(Response::new(RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        let req = req.into_inner();
        let id = required(&req.pod_sandbox_id, "pod_sandbox_id")?;
        let p = self.engine.pod_status(id).map_err(to_status)?;
        let mut info = HashMap::new();
        if req.verbose {
            let v = serde_json::json!({
                "pid": p.monitor_pid, "dir": p.dir, "netns": p.netns, "cgroup": p.cgroup,
                "hostname": p.hostname, "reason": p.reason,
                // From UpdatePodSandboxResources: what the pod cgroup was given.
                "resources": p.resources,
            });
            info.insert("info".to_owned(), v.to_string());
        }
        let containers_statuses = self
            .engine
            .list_containers()
            .map_err(to_status)?
            .iter()
            .filter(|c| c.pod_id == p.id)
            .map(|c| convert::container_status(c))
            .collect();
        Ok(Response::new(PodSandboxStatusResponse {
            status: Some(convert::pod_status(&p)),
            info,
            containers_statuses,
            timestamp: now_nanos(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        let items = lists::pods(&self.engine, req.into_inner().filter)?;
        Ok(Response::new(ListPodSandboxResponse { items }))
    }

    type StreamPodSandboxesStream = lists::ListStream<StreamPodSandboxesResponse>;

    async fn stream_pod_sandboxes(
        &self,
        req: Request<StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let items = lists::pods(&self.engine, req.into_inner().filter)?;
        Ok(Response::new(lists::chunked(items, |pod_sandboxes| {
            StreamPodSandboxesResponse { pod_sandboxes }
        })))
    }

    async fn create_container(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let req = req.into_inner();
        let pod = required(&req.pod_sandbox_id, "pod_sandbox_id")?;
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let id = self
            .engine
            .create_container(
                pod,
                &convert::container_config(&config),
                req.sandbox_config
                    .as_ref()
                    .map(convert::pod_config)
                    .as_ref(),
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(CreateContainerResponse { container_id: id }))
    }

    async fn start_container(
        &self,
        req: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        let id = required(&req.get_ref().container_id, "container_id")?;
        self.engine.start_container(id).await.map_err(to_status)?;
        Ok(Response::new(StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        req: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        let req = req.into_inner();
        let id = required(&req.container_id, "container_id")?;
        self.engine
            .stop_container(id, req.timeout)
            .await
            .map_err(to_status)?;
        Ok(Response::new(StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        req: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        let id = required(&req.get_ref().container_id, "container_id")?;
        self.engine.remove_container(id).await.map_err(to_status)?;
        Ok(Response::new(RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let containers = lists::containers(&self.engine, req.into_inner().filter)?;
        Ok(Response::new(ListContainersResponse { containers }))
    }

    type StreamContainersStream = lists::ListStream<StreamContainersResponse>;

    async fn stream_containers(
        &self,
        req: Request<StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let items = lists::containers(&self.engine, req.into_inner().filter)?;
        Ok(Response::new(lists::chunked(items, |containers| {
            StreamContainersResponse { containers }
        })))
    }

    async fn container_status(
        &self,
        req: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let req = req.into_inner();
        let id = required(&req.container_id, "container_id")?;
        let c = self.engine.container_status(id).map_err(to_status)?;
        let mut info = HashMap::new();
        if req.verbose {
            let v = serde_json::json!({
                "pid": c.pid, "sandboxID": c.pod_id, "cgroup": c.cgroup, "args": c.launch.process.args,
                "rootfs": c.launch.rootfs, "user": c.launch.process.user,
                "runtimeSpec": berth_engine::spec::runtime_spec::render(
                    &c.launch, None, &c.annotations, c.launch.hooks.as_ref(),
                ),
            });
            info.insert("info".to_owned(), v.to_string());
        }
        Ok(Response::new(ContainerStatusResponse {
            status: Some(convert::container_status(&c)),
            info,
        }))
    }

    async fn reopen_container_log(
        &self,
        req: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        let id = required(&req.get_ref().container_id, "container_id")?;
        self.engine
            .reopen_container_log(id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(ReopenContainerLogResponse {}))
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

    async fn update_container_resources(
        &self,
        req: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        let req = req.into_inner();
        let id = required(&req.container_id, "container_id")?;
        let linux = convert::resources_request(&req.linux.unwrap_or_default());
        self.engine
            .update_container_resources(id, &linux)
            .await
            .map_err(to_status)?;
        Ok(Response::new(UpdateContainerResourcesResponse {}))
    }
    async fn exec_sync(
        &self,
        req: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        let req = req.into_inner();
        let id = required(&req.container_id, "container_id")?;
        let (exit_code, stdout, stderr) = self
            .engine
            .exec_sync(id, &req.cmd, req.timeout)
            .await
            .map_err(to_status)?;
        Ok(Response::new(ExecSyncResponse {
            stdout,
            stderr,
            exit_code,
        }))
    }
    async fn exec(&self, req: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        use crate::streaming::cache::StreamRequest;
        let req = req.into_inner();
        let id = required(&req.container_id, "container_id")?;
        if req.cmd.first().is_none_or(|c| c.is_empty()) {
            return Err(Status::invalid_argument("cmd is empty"));
        }
        self.check_stream_request(id, req.stdin, req.stdout, req.stderr, req.tty)?;
        let url = self.stream_url(StreamRequest::Exec {
            container_id: id.to_owned(),
            cmd: req.cmd,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        })?;
        Ok(Response::new(ExecResponse { url }))
    }
    async fn attach(
        &self,
        req: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        use crate::streaming::cache::StreamRequest;
        let req = req.into_inner();
        let id = required(&req.container_id, "container_id")?;
        self.check_stream_request(id, req.stdin, req.stdout, req.stderr, req.tty)?;
        let url = self.stream_url(StreamRequest::Attach {
            container_id: id.to_owned(),
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        })?;
        Ok(Response::new(AttachResponse { url }))
    }
    async fn port_forward(
        &self,
        req: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        use crate::streaming::cache::StreamRequest;
        let req = req.into_inner();
        let id = required(&req.pod_sandbox_id, "pod_sandbox_id")?;
        let pod = self.engine.pod_status(id).map_err(to_status)?;
        if pod.state != berth_engine::state::records::PodState::Ready {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {id} is not ready"
            )));
        }
        let ports =
            req.port
                .iter()
                .map(|p| {
                    u16::try_from(*p).ok().filter(|p| *p > 0).ok_or_else(|| {
                        Status::invalid_argument(format!("port {p} is not a TCP port"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
        let url = self.stream_url(StreamRequest::PortForward {
            pod_id: pod.id,
            ports,
        })?;
        Ok(Response::new(PortForwardResponse { url }))
    }
    async fn container_stats(
        &self,
        req: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let id = required(&req.get_ref().container_id, "container_id")?.to_owned();
        let engine = self.engine.clone();
        let f = blocking(move || engine.container_stats(&id)).await?;
        let stats = stats::container_stats(&f, &self.engine.writable_layer_mountpoint());
        Ok(Response::new(ContainerStatsResponse { stats: Some(stats) }))
    }
    async fn list_container_stats(
        &self,
        req: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        let (engine, filter) = (self.engine.clone(), req.into_inner().filter);
        let stats = blocking_status(move || lists::container_stats(&engine, filter)).await?;
        Ok(Response::new(ListContainerStatsResponse { stats }))
    }

    type StreamContainerStatsStream = lists::ListStream<StreamContainerStatsResponse>;

    async fn stream_container_stats(
        &self,
        req: Request<StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let (engine, filter) = (self.engine.clone(), req.into_inner().filter);
        let items = blocking_status(move || lists::container_stats(&engine, filter)).await?;
        Ok(Response::new(lists::chunked(items, |container_stats| {
            StreamContainerStatsResponse { container_stats }
        })))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        let id = required(&req.get_ref().pod_sandbox_id, "pod_sandbox_id")?.to_owned();
        let engine = self.engine.clone();
        let f = blocking(move || engine.pod_stats(&id)).await?;
        let stats = stats::pod_stats(&f, &self.engine.writable_layer_mountpoint());
        Ok(Response::new(PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }
    async fn list_pod_sandbox_stats(
        &self,
        req: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        let (engine, filter) = (self.engine.clone(), req.into_inner().filter);
        let stats = blocking_status(move || lists::pod_stats(&engine, filter)).await?;
        Ok(Response::new(ListPodSandboxStatsResponse { stats }))
    }

    type StreamPodSandboxStatsStream = lists::ListStream<StreamPodSandboxStatsResponse>;

    async fn stream_pod_sandbox_stats(
        &self,
        req: Request<StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let (engine, filter) = (self.engine.clone(), req.into_inner().filter);
        let items = blocking_status(move || lists::pod_stats(&engine, filter)).await?;
        Ok(Response::new(lists::chunked(items, |pod_sandbox_stats| {
            StreamPodSandboxStatsResponse { pod_sandbox_stats }
        })))
    }

    async fn checkpoint_container(
        &self,
        req: Request<CheckpointContainerRequest>,
    ) -> Result<Response<CheckpointContainerResponse>, Status> {
        let r = req.into_inner();
        required(&r.container_id, "container_id")?;
        // Its own task: a client that gives up (kubelet's deadline is the checkpoint's
        // timeout) must not cut the dump short, with the container frozen or CRIU killed
        // half way; the engine cleans up after itself as it ends.
        let engine = self.engine.clone();
        tokio::spawn(async move {
            engine
                .checkpoint_container(&r.container_id, &r.location, r.timeout)
                .await
        })
        .await
        .map_err(|e| Status::internal(format!("checkpoint: {e}")))?
        .map_err(to_status)?;
        Ok(Response::new(CheckpointContainerResponse {}))
    }
    async fn get_container_events(
        &self,
        _req: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Ok(Response::new(super::events::container_events(
            self.engine.clone(),
        )))
    }
    async fn list_metric_descriptors(
        &self,
        _req: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(ListMetricDescriptorsResponse {
            descriptors: stats::metric_descriptors(),
        }))
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        let engine = self.engine.clone();
        let pod_metrics = blocking(move || stats::pod_sandbox_metrics(&engine)).await?;
        Ok(Response::new(ListPodSandboxMetricsResponse { pod_metrics }))
    }

    type StreamPodSandboxMetricsStream = lists::ListStream<StreamPodSandboxMetricsResponse>;

    async fn stream_pod_sandbox_metrics(
        &self,
        _req: Request<StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        let engine = self.engine.clone();
        let items = blocking(move || stats::pod_sandbox_metrics(&engine)).await?;
        Ok(Response::new(lists::chunked(
            items,
            |pod_sandbox_metrics| StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            },
        )))
    }

    async fn update_pod_sandbox_resources(
        &self,
        req: Request<UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<UpdatePodSandboxResourcesResponse>, Status> {
        let req = req.into_inner();
        let id = required(&req.pod_sandbox_id, "pod_sandbox_id")?;
        self.engine
            .update_pod_resources(
                id,
                req.overhead
                    .as_ref()
                    .map(convert::resources_request)
                    .as_ref(),
                req.resources
                    .as_ref()
                    .map(convert::resources_request)
                    .as_ref(),
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(UpdatePodSandboxResourcesResponse {}))
    }
}

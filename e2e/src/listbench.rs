//! `berth-bench lists`: ListContainers against StreamContainers on a node with many
//! created containers (CRI 1.36's streaming list calls), and berthd's peak RSS meanwhile.

use std::time::Instant;

use berth_proto::cri;
use futures_util::StreamExt;

use crate::images::catalog;
use crate::{Daemon, Registry, suite};

/// Figures of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListReport {
    pub containers: usize,
    pub list_ms: suite::Percentiles,
    pub stream_ms: suite::Percentiles,
    pub stream_messages: usize,
    pub list_bytes: usize,
    pub rss_kib_before: u64,
    pub rss_kib_peak: u64,
}

/// Creates `containers` containers (not started) in pods of 100, then times `runs` of each
/// call.
pub async fn run(containers: usize, runs: usize) -> ListReport {
    assert!(catalog::available(), "busybox-static is needed");
    let reg = Registry::start().expect("docker-registry is needed");
    reg.push_image("busybox", "latest", &catalog::busybox().build());
    let d = Daemon::start().await;
    let pid = d.pid().map(|p| p.as_raw() as u32).unwrap_or(0);
    let mut c = d.cri().await;
    let image = format!("{}/busybox:latest", reg.host());
    c.pull(&image, None).await.expect("pull");
    let _ = std::fs::create_dir_all("/tmp/berth-bench-logs");
    let rss_kib_before = suite::rss_kib(pid);
    let mut pods = Vec::new();
    let mut made = 0;
    while made < containers {
        let cfg = suite::pod_config("lists", pods.len());
        let pod = c.run_pod(cfg.clone()).await;
        for i in 0..100.min(containers - made) {
            let mut cc = suite::container_config(&image);
            cc.metadata = Some(cri::ContainerMetadata {
                name: format!("c{i}"),
                attempt: 0,
            });
            cc.labels
                .insert("app".into(), format!("lists-{}", pods.len()));
            cc.annotations
                .insert("kubernetes.io/config.source".into(), "api".into());
            c.runtime
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(cc),
                    sandbox_config: Some(cfg.clone()),
                })
                .await
                .expect("CreateContainer");
            made += 1;
        }
        pods.push(pod);
    }
    let mut peak = suite::rss_kib(pid);
    let (mut list, mut stream) = (Vec::new(), Vec::new());
    let (mut list_bytes, mut stream_messages) = (0, 0);
    for _ in 0..runs {
        let t = Instant::now();
        let r = c
            .runtime
            .list_containers(cri::ListContainersRequest::default())
            .await
            .expect("ListContainers")
            .into_inner();
        list.push(t.elapsed().as_secs_f64() * 1e3);
        list_bytes = berth_proto::prost::Message::encoded_len(&r);
        assert_eq!(r.containers.len(), containers);
        peak = peak.max(suite::rss_kib(pid));
        let t = Instant::now();
        let mut s = c
            .runtime
            .stream_containers(cri::StreamContainersRequest::default())
            .await
            .expect("StreamContainers")
            .into_inner();
        let (mut n, mut msgs) = (0, 0);
        while let Some(m) = s.next().await {
            n += m.expect("stream message").containers.len();
            msgs += 1;
        }
        stream.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(n, containers);
        stream_messages = msgs;
        peak = peak.max(suite::rss_kib(pid));
    }
    for p in pods {
        c.stop_and_remove_pod(&p).await;
    }
    let _ = std::fs::remove_dir_all("/tmp/berth-bench-logs");
    ListReport {
        containers,
        list_ms: suite::percentiles(&mut list),
        stream_ms: suite::percentiles(&mut stream),
        stream_messages,
        list_bytes,
        rss_kib_before,
        rss_kib_peak: peak,
    }
}

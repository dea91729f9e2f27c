//! GetContainerEvents end to end: a full lifecycle in order, and an exit that happened
//! while berthd was down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use berth_e2e::Cri;
use berth_e2e::env::BusyboxEnv;
use berth_proto::cri;
use berth_proto::cri::ContainerEventType as T;
use tokio_stream::StreamExt;

fn pod_config(logs: &std::path::Path, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "events".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        ..Default::default()
    }
}

fn container(image: &str, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "main".into(),
            attempt: 0,
        }),
        image: Some(berth_e2e::cri::spec(image)),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: "main.log".into(),
        ..Default::default()
    }
}

type Events = tonic::Streaming<cri::ContainerEventResponse>;

async fn subscribe(c: &mut Cri) -> Events {
    c.runtime
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Reads events until `done` says the ones read so far are enough (5 s at most).
async fn read_until(
    stream: &mut Events,
    done: impl Fn(&[cri::ContainerEventResponse]) -> bool,
) -> Vec<cri::ContainerEventResponse> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done(&out) {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("events so far: {out:?}"))
            .expect("the stream ended")
            .unwrap();
        out.push(next);
    }
    out
}

fn of(evs: &[cri::ContainerEventResponse], id: &str) -> Vec<cri::ContainerEventResponse> {
    evs.iter()
        .filter(|e| e.container_id == id)
        .cloned()
        .collect()
}

fn kinds(evs: &[cri::ContainerEventResponse]) -> Vec<i32> {
    evs.iter().map(|e| e.container_event_type).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_lifecycle_arrives_in_order() {
    let Some(BusyboxEnv {
        d,
        reg: _reg,
        mut c,
        image,
        logs,
    }) = BusyboxEnv::start().await
    else {
        return;
    };
    let mut stream = subscribe(&mut c).await;
    // A second subscriber that never reads must not hold anything up.
    let _idle = subscribe(&mut c).await;
    let pod = c.run_pod(pod_config(logs.path(), "life")).await;
    let id = c.run_container(&pod, container(&image, "exit 3")).await;
    c.wait_exited(&id).await;
    c.runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    c.stop_and_remove_pod(&pod).await;

    let all = read_until(&mut stream, |e| {
        of(e, &id).len() >= 4 && of(e, &pod).len() >= 4
    })
    .await;
    let evs = of(&all, &id);
    assert_eq!(
        kinds(&evs),
        vec![
            T::ContainerCreatedEvent as i32,
            T::ContainerStartedEvent as i32,
            T::ContainerStoppedEvent as i32,
            T::ContainerDeletedEvent as i32
        ]
    );
    assert!(evs.windows(2).all(|w| w[0].created_at <= w[1].created_at));
    // The STOPPED event carries the pod's status and the container's exit.
    let stopped = &evs[2];
    assert_eq!(stopped.pod_sandbox_status.as_ref().unwrap().id, pod);
    let st = stopped
        .containers_statuses
        .iter()
        .find(|s| s.id == id)
        .expect("the container's status");
    assert_eq!(st.exit_code, 3);
    let pod_evs = of(&all, &pod);
    assert_eq!(
        kinds(&pod_evs),
        vec![
            T::ContainerCreatedEvent as i32,
            T::ContainerStartedEvent as i32,
            T::ContainerStoppedEvent as i32,
            T::ContainerDeletedEvent as i32
        ]
    );
    drop(d);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exit_while_berthd_is_down_is_an_event_after_it_restarts() {
    let Some(BusyboxEnv {
        mut d,
        mut c,
        image,
        logs,
        reg: _reg,
    }) = BusyboxEnv::start().await
    else {
        return;
    };
    let pod = c.run_pod(pod_config(logs.path(), "down")).await;
    let id = c
        .run_container(&pod, container(&image, "sleep 1; exit 4"))
        .await;
    d.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    d.restart().await;
    let mut c = d.cri().await;
    let mut stream = subscribe(&mut c).await;
    let evs = of(
        &read_until(&mut stream, |e| !of(e, &id).is_empty()).await,
        &id,
    );
    assert_eq!(evs[0].container_event_type, T::ContainerStoppedEvent as i32);
    let st = evs[0]
        .containers_statuses
        .iter()
        .find(|s| s.id == id)
        .unwrap();
    assert_eq!(st.exit_code, 4);
    c.stop_and_remove_pod(&pod).await;
}

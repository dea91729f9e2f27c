//! GetContainerEvents: the engine's lifecycle events, replayed then live, each with the
//! statuses kubelet's evented PLEG reads from it.

use std::pin::Pin;
use std::sync::Arc;

use berth_engine::Engine;
use berth_proto::cri::{ContainerEventResponse, ContainerEventType};
use tokio_stream::Stream;
use tonic::Status;

use super::convert;

pub type EventStream = Pin<Box<dyn Stream<Item = Result<ContainerEventResponse, Status>> + Send>>;

/// A subscriber's stream. Each has its own small queue, so a slow one only waits on
/// itself; one that falls behind the engine's buffer gets DataLoss and must list again.
pub(super) fn container_events(engine: Arc<Engine>) -> EventStream {
    let (replay, mut live) = engine.subscribe_events();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        for ev in replay {
            if tx.send(Ok(event_response(&engine, &ev))).await.is_err() {
                return;
            }
        }
        loop {
            let item = match live.recv().await {
                Ok(ev) => Ok(event_response(&engine, &ev)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "an event subscriber fell behind; ending its stream"
                    );
                    Err(Status::data_loss(format!(
                        "this subscriber fell {n} events behind; list pods and containers again and resubscribe"
                    )))
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let end = item.is_err();
            if tx.send(item).await.is_err() || end {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// A lifecycle event with the statuses kubelet's evented PLEG wants: the pod's, and those
/// of the pod's containers as they are now.
fn event_response(
    engine: &Engine,
    ev: &berth_engine::events::ContainerEvent,
) -> ContainerEventResponse {
    use berth_engine::events::EventKind;
    let pod_sandbox_status = engine
        .pod_status(&ev.pod_id)
        .ok()
        .map(|p| convert::pod_status(&p));
    let containers_statuses = engine
        .list_containers()
        .unwrap_or_default()
        .iter()
        .filter(|c| c.pod_id == ev.pod_id)
        .map(|c| convert::container_status(c))
        .collect();
    ContainerEventResponse {
        container_id: ev.container_id.clone(),
        container_event_type: match ev.kind {
            EventKind::Created => ContainerEventType::ContainerCreatedEvent,
            EventKind::Started => ContainerEventType::ContainerStartedEvent,
            EventKind::Stopped => ContainerEventType::ContainerStoppedEvent,
            EventKind::Deleted => ContainerEventType::ContainerDeletedEvent,
        } as i32,
        created_at: ev.created_at,
        pod_sandbox_status,
        containers_statuses,
    }
}

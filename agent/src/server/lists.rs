//! What the List calls and their Stream counterparts (CRI 1.36) answer: the same items
//! under the same filters. A List answers in one message; a Stream in messages of at most
//! [`CHUNK_BYTES`] each, so that a node whose list would pass a client's message limit
//! (Go's default is 4 MiB, kubelet's 16 MiB) still answers, every item exactly once.

use std::pin::Pin;

use berth_engine::Engine;
use berth_proto::cri;
use berth_proto::prost::Message;
use futures_util::Stream;
use tonic::Status;

use super::status::to_status;
use super::{convert, stats};

/// Encoded bytes of one streamed message at most (an item larger than this goes alone).
pub const CHUNK_BYTES: usize = 1 << 20;

/// A server stream of list messages.
pub type ListStream<R> = Pin<Box<dyn Stream<Item = Result<R, Status>> + Send>>;

/// Splits `items` into messages of at most [`CHUNK_BYTES`], each made by `wrap`.
pub fn chunked<I, R>(items: Vec<I>, wrap: impl Fn(Vec<I>) -> R + Send + 'static) -> ListStream<R>
where
    I: Message + Send + 'static,
    R: Send + 'static,
{
    let mut chunks: Vec<Vec<I>> = Vec::new();
    let mut size = 0;
    for item in items {
        // Each repeated field costs its length and a tag byte or two besides.
        let n = item.encoded_len() + 6;
        match chunks.last_mut() {
            Some(c) if size + n <= CHUNK_BYTES => {
                c.push(item);
                size += n;
            }
            _ => {
                chunks.push(vec![item]);
                size = n;
            }
        }
    }
    Box::pin(futures_util::stream::iter(
        chunks.into_iter().map(move |c| Ok(wrap(c))),
    ))
}

/// The pods ListPodSandbox and StreamPodSandboxes answer.
pub fn pods(
    engine: &Engine,
    filter: Option<cri::PodSandboxFilter>,
) -> Result<Vec<cri::PodSandbox>, Status> {
    let filter = filter.unwrap_or_default();
    Ok(engine
        .list_pods()
        .map_err(to_status)?
        .iter()
        .filter(|p| filter.id.is_empty() || p.id.starts_with(&filter.id))
        .filter(|p| {
            filter
                .state
                .as_ref()
                .is_none_or(|s| convert::pod_state(p.state) == s.state)
        })
        .filter(|p| convert::labels_match(&p.labels, &filter.label_selector))
        .map(|p| convert::pod_sandbox(p))
        .collect())
}

/// The containers ListContainers and StreamContainers answer.
pub fn containers(
    engine: &Engine,
    filter: Option<cri::ContainerFilter>,
) -> Result<Vec<cri::Container>, Status> {
    let filter = filter.unwrap_or_default();
    Ok(engine
        .list_containers()
        .map_err(to_status)?
        .iter()
        .filter(|c| filter.id.is_empty() || c.id.starts_with(&filter.id))
        .filter(|c| {
            filter.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&filter.pod_sandbox_id)
        })
        .filter(|c| {
            filter
                .state
                .as_ref()
                .is_none_or(|s| convert::container_state(c.state) == s.state)
        })
        .filter(|c| convert::labels_match(&c.labels, &filter.label_selector))
        .map(|c| convert::container(c))
        .collect())
}

/// The stats ListContainerStats and StreamContainerStats answer (reads cgroup files).
pub fn container_stats(
    engine: &Engine,
    filter: Option<cri::ContainerStatsFilter>,
) -> Result<Vec<cri::ContainerStats>, Status> {
    let filter = filter.as_ref().map(convert::container_stats_filter);
    let figures = engine
        .container_figures_list(filter.as_ref())
        .map_err(to_status)?;
    let mp = engine.writable_layer_mountpoint();
    Ok(figures
        .iter()
        .map(|f| stats::container_stats(f, &mp))
        .collect())
}

/// The stats ListPodSandboxStats and StreamPodSandboxStats answer (reads cgroup files).
pub fn pod_stats(
    engine: &Engine,
    filter: Option<cri::PodSandboxStatsFilter>,
) -> Result<Vec<cri::PodSandboxStats>, Status> {
    let filter = filter.as_ref().map(convert::pod_stats_filter);
    let figures = engine
        .pod_figures_list(filter.as_ref())
        .map_err(to_status)?;
    let mp = engine.writable_layer_mountpoint();
    Ok(figures.iter().map(|f| stats::pod_stats(f, &mp)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn chunks_are_bounded_and_carry_every_item_once() {
        let items: Vec<cri::Container> = (0..300)
            .map(|i| cri::Container {
                id: format!("c{i}"),
                annotations: [("a".to_string(), "x".repeat(20_000 + i))].into(),
                ..Default::default()
            })
            .collect();
        let total: usize = items.iter().map(Message::encoded_len).sum();
        assert!(total > 3 * CHUNK_BYTES);
        let msgs: Vec<cri::StreamContainersResponse> = chunked(items, |containers| {
            cri::StreamContainersResponse { containers }
        })
        .map(|r| r.unwrap())
        .collect()
        .await;
        assert!(msgs.len() >= 3);
        assert!(msgs.iter().all(|m| m.encoded_len() <= CHUNK_BYTES + 16));
        let ids: Vec<String> = msgs
            .iter()
            .flat_map(|m| m.containers.iter().map(|c| c.id.clone()))
            .collect();
        assert_eq!(ids, (0..300).map(|i| format!("c{i}")).collect::<Vec<_>>());
        // Nothing to list: no message at all.
        let none: Vec<_> = chunked(Vec::<cri::Container>::new(), |containers| {
            cri::StreamContainersResponse { containers }
        })
        .collect()
        .await;
        assert!(none.is_empty());
    }
}

//! Limits on the labels and annotations of pods and containers. Everything berth stores of
//! them comes back in every ListPodSandbox and ListContainers answer, so one object with
//! megabytes of annotations could push a list past the client's message limit (kubelet's
//! is 16 MiB) and break listing for every pod on the node.
//!
//! Per object: Kubernetes allows 256 KiB of annotations on an object, and kubelet adds a
//! few of its own when it passes them on, so berth takes twice that for labels and
//! annotations together. Per node: all pods' metadata (and, separately, all containers')
//! stays within a budget that leaves room in a 16 MiB answer for everything else a list
//! item carries, so that the lists always fit.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Labels and annotations of one object, bytes of keys and values together.
pub const MAX_OBJECT_METADATA: usize = 512 * 1024;
/// Labels and annotations of all pods (or all containers) of the node together.
pub const NODE_METADATA_BUDGET: usize = 12 * 1024 * 1024;
/// The longest single key (Kubernetes: a 253-byte prefix, '/', a 63-byte name).
pub const MAX_KEY: usize = 317;

/// Bytes of an object's labels and annotations as they travel in a list answer.
pub fn size(labels: &BTreeMap<String, String>, annotations: &BTreeMap<String, String>) -> usize {
    labels
        .iter()
        .chain(annotations)
        .map(|(k, v)| k.len() + v.len())
        .sum()
}

/// Checks one object's labels and annotations; `what` names the object in the error.
pub fn check_object(
    what: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Result<usize> {
    for (field, m) in [("labels", labels), ("annotations", annotations)] {
        if let Some(k) = m.keys().find(|k| k.is_empty() || k.len() > MAX_KEY) {
            return Err(Error::InvalidArgument(format!(
                "{what}.{field}: key {:?}{} must be 1 to {MAX_KEY} bytes",
                k.chars().take(80).collect::<String>(),
                if k.len() > 80 { "..." } else { "" }
            )));
        }
    }
    let n = size(labels, annotations);
    if n > MAX_OBJECT_METADATA {
        return Err(Error::InvalidArgument(format!(
            "{what}: labels and annotations take {n} bytes; berth takes at most {MAX_OBJECT_METADATA} per object (Kubernetes allows 256 KiB of annotations)"
        )));
    }
    Ok(n)
}

/// Checks that an object of `new` bytes of metadata fits the node's budget beside the
/// `used` bytes of the live objects of its kind (`kind`: "pods" or "containers").
pub fn check_node_budget(kind: &str, used: usize, new: usize) -> Result<()> {
    if used.saturating_add(new) > NODE_METADATA_BUDGET {
        return Err(Error::ResourceExhausted(format!(
            "the labels and annotations of all {kind} on this node would take {} bytes, over berth's budget of {NODE_METADATA_BUDGET} (it keeps list answers within kubelet's 16 MiB message limit); remove {kind} or shrink their annotations",
            used.saturating_add(new)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(n: usize, each: usize) -> BTreeMap<String, String> {
        (0..n)
            .map(|i| (format!("k{i}"), "v".repeat(each)))
            .collect()
    }

    #[test]
    fn objects_and_the_node_budget() {
        assert_eq!(check_object("config", &map(2, 10), &map(1, 5)).unwrap(), 31);
        let e = check_object("config", &BTreeMap::new(), &map(1, 4 << 20)).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        let mut long = BTreeMap::new();
        long.insert("k".repeat(400), String::new());
        assert!(check_object("config", &long, &BTreeMap::new()).is_err());
        assert!(check_node_budget("pods", NODE_METADATA_BUDGET - 10, 10).is_ok());
        let e = check_node_budget("pods", NODE_METADATA_BUDGET - 10, 11).unwrap_err();
        assert!(matches!(e, Error::ResourceExhausted(_)), "{e}");
    }
}

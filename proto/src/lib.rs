//! berth-proto: wire types only, no logic.
//!
//! - [`cri`]: the Kubernetes CRI v1 messages and tonic services, re-exported from `k8s-cri`
//!   so that every berth crate names one version of them.
//! - [`monitor`]: berth's own protocol between `berthd` and its per-pod monitors, generated
//!   from `berth/monitor.proto`, with its framing constants.
#![forbid(unsafe_code)]

pub use k8s_cri::v1 as cri;
pub use prost;

/// berthd <-> per-pod monitor protocol (`berth/monitor.proto`).
#[allow(missing_debug_implementations, clippy::all)]
pub mod monitor {
    include!(concat!(env!("OUT_DIR"), "/berth.monitor.v1.rs"));

    /// Protocol version spoken by this build (monitor.proto says what each adds).
    pub const PROTOCOL_VERSION: u32 = 2;
    /// Largest frame either end accepts (length prefix excluded).
    pub const MAX_FRAME: usize = 4 << 20;
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::monitor::{Frame, Hello, frame};

    #[test]
    fn monitor_frame_round_trips() {
        let f = Frame {
            id: 7,
            body: Some(frame::Body::Hello(Hello {
                protocol_version: super::monitor::PROTOCOL_VERSION,
                agent: "berth test".into(),
                pod_id: "p".into(),
                pid: 1,
            })),
        };
        let bytes = f.encode_to_vec();
        assert_eq!(Frame::decode(bytes.as_slice()).unwrap(), f);
    }

    #[test]
    fn cri_types_are_reexported() {
        let v = super::cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "berth".into(),
            runtime_version: "0.1.0".into(),
            runtime_api_version: "v1".into(),
        };
        assert_eq!(v.runtime_name, "berth");
    }
}

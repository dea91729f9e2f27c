//! berth-proto: wire types only, no logic.
//!
//! - [`cri`]: the Kubernetes CRI v1 messages and tonic services, generated from the CRI
//!   1.36 `api.proto` vendored in `cri/v1.36/` ([`CRI_API_VERSION`]), so that every berth
//!   crate names one version of them.
//! - [`images`]: berth's own image service (archive import and export) on the CRI socket.
//! - [`monitor`]: berth's own protocol between `berthd` and its per-pod monitors, generated
//!   from `berth/monitor.proto`, with its framing constants.
#![forbid(unsafe_code)]

pub use prost;

/// The CRI release the bindings are generated from.
pub const CRI_API_VERSION: &str = "v1.36";

/// CRI v1 (`runtime.v1`): messages, and the RuntimeService and ImageService servers and
/// clients.
#[allow(
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    rustdoc::all
)]
pub mod cri {
    include!(concat!(env!("OUT_DIR"), "/runtime.v1.rs"));
}

/// berth's own image service (`berth/images.proto`): import and export of image archives,
/// on the CRI socket.
#[allow(
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    rustdoc::all
)]
pub mod images {
    include!(concat!(env!("OUT_DIR"), "/berth.images.v1.rs"));
}

/// berthd <-> per-pod monitor protocol (`berth/monitor.proto`).
#[allow(missing_debug_implementations, clippy::all)]
pub mod monitor {
    include!(concat!(env!("OUT_DIR"), "/berth.monitor.v1.rs"));

    /// Protocol version spoken by this build (monitor.proto says what each adds).
    pub const PROTOCOL_VERSION: u32 = 5;
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

    /// The vendored api.proto is the released one, byte for byte.
    #[test]
    fn the_cri_proto_is_kept_byte_identical() {
        use sha2::Digest;
        let text =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/cri/v1.36/api.proto")).unwrap();
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&text)),
            "e545595feb7d82c5433a443975c15f59ce5b04bb876ab30fb9c59c8eca4715c9"
        );
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

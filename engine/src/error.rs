//! The engine's error type and its classification.
//!
//! Every module has its own `thiserror` enum; they aggregate into [`Error`]. The agent maps
//! [`ErrorKind`] to a gRPC status code in exactly one place (`agent/src/server/status.rs`).

use std::path::PathBuf;

/// How an error should be reported to a CRI client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    PermissionDenied,
    InvalidArgument,
    FailedPrecondition,
    Unavailable,
    ResourceExhausted,
    DataLoss,
    DeadlineExceeded,
    Unimplemented,
    Internal,
}

impl ErrorKind {
    /// Every kind (the monitor wire names them in `monitor::wire`, not by position).
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::PermissionDenied,
        ErrorKind::InvalidArgument,
        ErrorKind::FailedPrecondition,
        ErrorKind::Unavailable,
        ErrorKind::ResourceExhausted,
        ErrorKind::DataLoss,
        ErrorKind::DeadlineExceeded,
        ErrorKind::Unimplemented,
        ErrorKind::Internal,
    ];
}

/// An I/O error together with the path it concerns and what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct IoError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Extension for attaching a path and an operation to `std::io::Result`.
pub trait IoContext<T> {
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T, IoError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T, IoError> {
        self.map_err(|source| IoError {
            op,
            path: path.into(),
            source,
        })
    }
}

/// Errors of the engine, one variant per module family.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(
        "another berthd already uses root {root} (lock {lock} is held); stop it first or choose another --root"
    )]
    RootLocked { root: PathBuf, lock: PathBuf },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Network(#[from] berth_cni::NetworkError),
    #[error(transparent)]
    Content(#[from] crate::content::ContentError),
    #[error("pull {image}: {source}")]
    Pull {
        image: String,
        #[source]
        source: crate::images::pull::PullError,
    },
    #[error(transparent)]
    Reference(#[from] crate::images::reference::BadReference),
    #[error("image {0:?} not found")]
    ImageNotFound(String),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error(transparent)]
    Cgroup(#[from] crate::linux::cgroups::manager::CgroupError),
    #[error(transparent)]
    Monitor(#[from] crate::monitor::client::MonitorError),
    #[error(transparent)]
    Systemd(Box<crate::systemd::SystemdError>),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Something the request needs cannot be reached right now (a pod's port).
    #[error("{0}")]
    Unavailable(String),
    /// A node-wide budget is used up (metadata of all pods, ExecSync output).
    #[error("{0}")]
    ResourceExhausted(String),
    /// Something this node cannot do at all (CRIU missing or unable to run on its kernel).
    #[error("{0}")]
    Unimplemented(String),
}

impl Error {
    /// The class of this error, for status codes and retry decisions.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::State(e) => e.kind(),
            Error::Io(_) => ErrorKind::Internal,
            Error::RootLocked { .. } => ErrorKind::FailedPrecondition,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::Network(e) => match e {
                berth_cni::NetworkError::InvalidCidr { .. } => ErrorKind::InvalidArgument,
                berth_cni::NetworkError::Ipam(berth_cni::builtin::ipam::IpamError::RangeFull(
                    _,
                )) => ErrorKind::ResourceExhausted,
                berth_cni::NetworkError::Conflict(_) => ErrorKind::FailedPrecondition,
                berth_cni::NetworkError::Netlink { source, .. }
                | berth_cni::NetworkError::Sysctl { source, .. }
                    if source.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    ErrorKind::PermissionDenied
                }
                _ => ErrorKind::Internal,
            },
            Error::Content(e) => e.kind(),
            Error::Pull { source, .. } => source.kind(),
            Error::Reference(_) => ErrorKind::InvalidArgument,
            Error::ImageNotFound(_) => ErrorKind::NotFound,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::ResourceExhausted(_) => ErrorKind::ResourceExhausted,
            Error::Unimplemented(_) => ErrorKind::Unimplemented,
            Error::Spec(e) => e.kind(),
            Error::Cgroup(e) => e.kind(),
            Error::Monitor(e) => e.kind(),
            Error::Systemd(e) => match **e {
                crate::systemd::SystemdError::Connect(_) => ErrorKind::FailedPrecondition,
                _ => ErrorKind::Internal,
            },
            Error::Internal(_) => ErrorKind::Internal,
            Error::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
        }
    }
}

impl From<crate::systemd::SystemdError> for Error {
    fn from(e: crate::systemd::SystemdError) -> Error {
        Error::Systemd(Box::new(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

//! THE mapping from engine errors to gRPC status codes. Nowhere else converts them.

use berth_engine::{Error, ErrorKind};
use tonic::{Code, Status};

/// The gRPC code for an engine error class.
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::DataLoss => Code::DataLoss,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::Unimplemented => Code::Unimplemented,
        ErrorKind::Internal => Code::Internal,
    }
}

/// Converts an engine error into the status a CRI client sees.
pub fn to_status(e: Error) -> Status {
    Status::new(code(e.kind()), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_code() {
        let table = [
            (ErrorKind::NotFound, Code::NotFound),
            (ErrorKind::AlreadyExists, Code::AlreadyExists),
            (ErrorKind::PermissionDenied, Code::PermissionDenied),
            (ErrorKind::InvalidArgument, Code::InvalidArgument),
            (ErrorKind::FailedPrecondition, Code::FailedPrecondition),
            (ErrorKind::Unavailable, Code::Unavailable),
            (ErrorKind::ResourceExhausted, Code::ResourceExhausted),
            (ErrorKind::DataLoss, Code::DataLoss),
            (ErrorKind::DeadlineExceeded, Code::DeadlineExceeded),
            (ErrorKind::Unimplemented, Code::Unimplemented),
            (ErrorKind::Internal, Code::Internal),
        ];
        assert_eq!(
            table.len(),
            ErrorKind::ALL.len(),
            "a kind is missing from this table"
        );
        for (k, c) in table {
            assert_eq!(code(k), c, "{k:?}");
        }
    }

    #[test]
    fn engine_errors_keep_their_message() {
        let s = to_status(Error::InvalidArgument("pod_cidr: bad".into()));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("pod_cidr"));
        let u = to_status(Error::Unimplemented("no criu".into()));
        assert_eq!(u.code(), Code::Unimplemented);
        assert!(u.message().contains("no criu"));
    }
}

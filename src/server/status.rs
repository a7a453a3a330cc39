//! The gRPC door's one mapping from the broker's errors to `tonic::Status`.

use tonic::Status;

use crate::broker::Error;

/// The status a gRPC client sees for `e`.
pub fn status(e: Error) -> Status {
    Status::new(e.code(), e.to_string())
}

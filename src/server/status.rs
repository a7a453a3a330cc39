//! The gRPC door's one mapping from the broker's errors to `tonic::Status`.

use tonic::Status;

use crate::broker::Error;

/// The status a gRPC client sees for `e`; a write refused by a follower carries the
/// leader's address in the `framecast-leader` trailer.
pub fn status(e: Error) -> Status {
    let mut status = Status::new(e.code(), e.to_string());
    if let Error::NotLeader { leader, .. } = &e {
        if let Ok(v) = leader.parse() {
            if !leader.is_empty() {
                status.metadata_mut().insert(crate::proto::LEADER_HEADER, v);
            }
        }
    }
    status
}

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

/// What tonic says when a request message is over the server's decoding limit
/// (`OUT_OF_RANGE`, before any handler runs).
const TOO_LARGE: &str = "decoded message length too large";
/// ... when a compressed message unpacks past the limit (`RESOURCE_EXHAUSTED`).
const UNPACKS_TOO_LARGE: &str = "exceeded while decompressing";
/// ... when a compressed message is not what its encoding says (`INTERNAL`).
const GARBLED_PACKING: &str = "Error decompressing";
/// ... when a message is not protobuf (`INTERNAL`, from the codec).
const GARBLED: &str = "failed to decode";

/// The refusal of a request message tonic could not decode — over the decoding limit (as
/// sent, or once decompressed), not protobuf, or not the compression it names — as the
/// broker's `INVALID_ARGUMENT` (API.md: a payload over `--max-frame-bytes` is
/// `INVALID_ARGUMENT`); `None` for a stream that broke otherwise (a client reset: nobody to
/// answer).
pub fn undecodable(s: &Status, max_frame_bytes: u64) -> Option<Error> {
    use tonic::Code;
    let message = s.message();
    let too_large = (s.code() == Code::OutOfRange && message.contains(TOO_LARGE))
        || (s.code() == Code::ResourceExhausted && message.contains(UNPACKS_TOO_LARGE));
    if too_large {
        return Some(Error::InvalidArgument(format!(
            "payload larger than --max-frame-bytes {max_frame_bytes}: {message}"
        )));
    }
    let garbled = s.code() == Code::Internal
        && (message.contains(GARBLED) || message.starts_with(GARBLED_PACKING));
    garbled.then(|| Error::InvalidArgument(format!("malformed request: {message}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_over_the_decoding_limit_is_invalid_argument() {
        let s = Status::out_of_range(
            "Error, decoded message length too large: found 9437184 bytes, the limit is: 8388608 bytes",
        );
        let e = undecodable(&s, 1 << 20).expect("a refusal");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e
            .to_string()
            .starts_with("payload larger than --max-frame-bytes 1048576: "));
        // Not protobuf.
        let s = Status::internal("failed to decode Protobuf message: buffer underflow");
        assert_eq!(
            undecodable(&s, 1).map(|e| e.code()),
            Some(tonic::Code::InvalidArgument)
        );
        // Compressed: unpacked past the limit, or not what its encoding says.
        let s = Status::resource_exhausted(
            "Error decompressing: size limit, of 8388608 bytes, exceeded while decompressing message",
        );
        assert!(
            undecodable(&s, 1).is_some_and(|e| e.to_string().starts_with("payload larger than"))
        );
        let s = Status::internal("Error decompressing: invalid gzip header, while sending request");
        assert!(undecodable(&s, 1).is_some());
        // A broken connection, the broker's own OUT_OF_RANGE or RESOURCE_EXHAUSTED (too many
        // subscribers), tonic's encoding limit: left alone.
        assert!(undecodable(&Status::resource_exhausted("too many subscribers"), 1).is_none());
        assert!(undecodable(
            &Status::out_of_range("Error, encoded message length too large: found 9 bytes"),
            1
        )
        .is_none());
        assert!(undecodable(&Status::unknown("h2 protocol error"), 1).is_none());
        assert!(undecodable(&Status::out_of_range("cursor past the end"), 1).is_none());
    }
}

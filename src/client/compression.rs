//! [`Compression`]: the gRPC message compression a client sends and asks for.

use std::fmt;
use std::str::FromStr;

use tonic::codec::CompressionEncoding;

/// gRPC message compression for a client: its requests are compressed with it, and it
/// advertises it in `grpc-accept-encoding`, so the server compresses its responses too.
/// `None` advertises nothing: the server then answers uncompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Plain messages (the default).
    #[default]
    None,
    /// gzip: understood by every gRPC implementation (grpcio included).
    Gzip,
    /// zstd: faster than gzip at a similar ratio; not every client library has it.
    Zstd,
}

impl Compression {
    /// tonic's encoding for this choice, `None` for plain messages: for code that builds its
    /// own generated client (the load generator).
    pub fn encoding(self) -> Option<CompressionEncoding> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some(CompressionEncoding::Gzip),
            Compression::Zstd => Some(CompressionEncoding::Zstd),
        }
    }

    /// The name used on the command line and in `grpc-encoding`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Compression {
    type Err = String;

    /// `none`, `identity`, `gzip` or `zstd` (any case).
    fn from_str(s: &str) -> Result<Compression, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "identity" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            other => Err(format!(
                "unknown compression '{other}' (expected none, gzip or zstd)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_refused() {
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            assert_eq!(c.as_str().parse::<Compression>(), Ok(c));
            assert_eq!(c.to_string().to_uppercase().parse::<Compression>(), Ok(c));
        }
        assert_eq!("identity".parse::<Compression>(), Ok(Compression::None));
        assert!("deflate".parse::<Compression>().is_err());
        assert_eq!(Compression::None.encoding(), None);
        assert_eq!(
            Compression::Zstd.encoding(),
            Some(CompressionEncoding::Zstd)
        );
    }
}

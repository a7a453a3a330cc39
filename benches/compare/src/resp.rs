//! A minimal RESP2 connection for the Redis readers. `redis-rs` builds a `Value` tree with
//! several allocations per stream entry; with 1,000 subscribers that made the load generator,
//! not Redis, the bottleneck of the fan-out comparison. This one parses a reply in place and
//! hands out payloads as slices of the buffer it arrived in.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A parsed reply; bulk strings are ranges into the reply's bytes.
pub enum Resp {
    Nil,
    Int,
    Simple,
    Error(String),
    Bulk(Range<usize>),
    Array(Vec<Resp>),
}

pub struct RespConn {
    stream: TcpStream,
    buf: BytesMut,
}

fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let end = buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
    Some((&buf[at..at + end], at + end + 2))
}

fn number(b: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad RESP number {:?}", String::from_utf8_lossy(b)))
}

/// Parses one reply at `at`; `Ok(None)` when more bytes are needed.
fn parse(buf: &[u8], at: usize) -> Result<Option<(Resp, usize)>, String> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((head, next)) = line(buf, at + 1) else {
        return Ok(None);
    };
    Ok(Some(match kind {
        b'+' => (Resp::Simple, next),
        b'-' => (
            Resp::Error(String::from_utf8_lossy(head).into_owned()),
            next,
        ),
        b':' => {
            number(head)?;
            (Resp::Int, next)
        }
        b'$' => {
            let n = number(head)?;
            if n < 0 {
                (Resp::Nil, next)
            } else {
                let end = next + n as usize;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                (Resp::Bulk(next..end), end + 2)
            }
        }
        b'*' => {
            let n = number(head)?;
            if n < 0 {
                (Resp::Nil, next)
            } else {
                let mut items = Vec::with_capacity(n as usize);
                let mut pos = next;
                for _ in 0..n {
                    match parse(buf, pos)? {
                        Some((v, p)) => {
                            items.push(v);
                            pos = p;
                        }
                        None => return Ok(None),
                    }
                }
                (Resp::Array(items), pos)
            }
        }
        k => return Err(format!("unexpected RESP type byte {k:#x}")),
    }))
}

impl RespConn {
    pub async fn connect(url: &str) -> Result<RespConn, String> {
        let addr = url.trim_start_matches("redis://").trim_end_matches('/');
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(RespConn {
            stream,
            buf: BytesMut::with_capacity(256 * 1024),
        })
    }

    /// Sends a command and returns its reply with the bytes its ranges point into.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<(Resp, Bytes), String> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            if let Some((v, n)) = parse(&self.buf, 0)? {
                let bytes = self.buf.split_to(n).freeze();
                if let Resp::Error(m) = v {
                    return Err(m);
                }
                return Ok((v, bytes));
            }
            if self.buf.capacity() - self.buf.len() < 64 * 1024 {
                self.buf.reserve(256 * 1024);
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_xread_reply_and_waits_for_the_rest() {
        let r = b"*1\r\n*2\r\n$1\r\nk\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nd\r\n$2\r\nhi\r\n";
        assert!(parse(&r[..r.len() - 3], 0).unwrap().is_none());
        let (v, n) = parse(r, 0).unwrap().unwrap();
        assert_eq!(n, r.len());
        let Resp::Array(streams) = v else { panic!() };
        assert_eq!(streams.len(), 1);
        assert!(matches!(
            parse(b"*-1\r\n", 0).unwrap(),
            Some((Resp::Nil, 5))
        ));
    }
}

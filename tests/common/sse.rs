//! A minimal Server-Sent Events reader for the tests of the SSE door: a raw HTTP/1.1
//! request, the chunked body decoded, events parsed as a browser's `EventSource` would.
//! Dropping it is a forced disconnect.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::http::Response;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.data))
    }
}

/// An open event stream.
pub struct Stream {
    lines: BufReader<Chunked>,
    /// Comment lines (`: ping`) seen.
    pub comments: Vec<String>,
}

/// Opens `GET path` on `base` with `headers`: the stream, or the response when the status
/// is not 200.
pub fn open(base: &str, path: &str, headers: &[(&str, &str)]) -> Result<Stream, Response> {
    try_open(base, path, headers).unwrap()
}

/// As [`open`], with a failure to connect or a connection broken before the body an error
/// (a node that is down, or killed meanwhile).
pub fn try_open(
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Result<Stream, Response>> {
    let host = base.trim_start_matches("http://");
    try_open_on(TcpStream::connect(host)?, base, path, headers)
}

/// As [`try_open`], over a connection already made to `base`.
pub fn try_open_on(
    mut s: TcpStream,
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Result<Stream, Response>> {
    let host = base.trim_start_matches("http://");
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    let mut r = BufReader::new(s);
    let mut status_line = String::new();
    if r.read_line(&mut status_line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':').unwrap();
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let mut body = Chunked {
        inner: r,
        chunked,
        left: 0,
        done: false,
    };
    if status != 200 {
        let mut b = Vec::new();
        let len = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse::<usize>().unwrap());
        match len {
            Some(n) => {
                b.resize(n, 0);
                body.inner.read_exact(&mut b)?;
            }
            None => {
                let _ = body.read_to_end(&mut b);
            }
        }
        return Ok(Err(Response {
            status,
            headers,
            body: b,
        }));
    }
    let ct = headers
        .iter()
        .find(|(n, _)| n == "content-type")
        .map(|(_, v)| v.clone());
    assert_eq!(ct.as_deref(), Some("text/event-stream"), "{headers:?}");
    Ok(Ok(Stream {
        lines: BufReader::new(body),
        comments: Vec::new(),
    }))
}

impl Stream {
    /// The next event; `None` when the stream ended.
    pub fn next_event(&mut self) -> Option<Event> {
        self.try_next_event().unwrap()
    }

    /// As [`Stream::next_event`], with a broken connection an error (a node killed).
    pub fn try_next_event(&mut self) -> std::io::Result<Option<Event>> {
        let mut e = Event {
            event: "message".into(),
            id: None,
            data: String::new(),
        };
        let mut any = false;
        loop {
            let mut line = String::new();
            if self.lines.read_line(&mut line)? == 0 {
                return Ok(None);
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if any {
                    return Ok(Some(e));
                }
                continue;
            }
            if let Some(c) = line.strip_prefix(':') {
                self.comments.push(c.to_string());
                continue;
            }
            any = true;
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => e.event = value.to_string(),
                "id" => e.id = Some(value.to_string()),
                "data" => {
                    if !e.data.is_empty() {
                        e.data.push('\n');
                    }
                    e.data.push_str(value);
                }
                _ => {}
            }
        }
    }
}

/// A body, de-chunked.
struct Chunked {
    inner: BufReader<TcpStream>,
    chunked: bool,
    left: usize,
    done: bool,
}

impl Read for Chunked {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.chunked {
            return self.inner.read(buf);
        }
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut size = String::new();
            self.inner.read_line(&mut size)?;
            if size.trim().is_empty() {
                // The CRLF after the previous chunk.
                size.clear();
                self.inner.read_line(&mut size)?;
            }
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            if n == 0 {
                self.done = true;
                return Ok(0);
            }
            self.left = n;
        }
        let want = buf.len().min(self.left);
        let got = self.inner.read(&mut buf[..want])?;
        self.left -= got;
        Ok(got)
    }
}

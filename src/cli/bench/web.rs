//! Subscribers on the HTTP door (`bench fanout --transport sse|ws`), one connection each, as
//! browsers have them.
//!
//! - Server-Sent Events over a small HTTP/1.1 client written here: one `GET`, the chunked
//!   body decoded into a buffer, the events split into lines. No HTTP library: the bench
//!   shares the machine with the server, and every cycle it spends is one the server lacks.
//! - WebSocket through tokio-tungstenite: one socket, one `subscribe`, then pushes.
//!
//! A frame's JSON is not parsed whole: `offset` and `payload` are found by their keys (the
//! server writes 64-bit integers as decimal strings and payloads as standard base64, neither
//! ever escaped, and both come before the only free text, `"text"`), and the payload is
//! decoded into a buffer each subscriber reuses, then checked exactly as a gRPC frame is.
//!
//! Both readers are cancel-safe: bytes only move from the socket into buffers the reader
//! owns, and are parsed without awaiting, so a `select!` that drops a `next()` loses nothing.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::error::{Error, Result, StreamError};
use super::wire::{Counted, WireBytes};

/// Bytes a reader asks the socket for at once (at least).
const READ_AT_ONCE: usize = 16 << 10;
/// A response head longer than this is not from framecast.
const MAX_HEAD: usize = 64 << 10;
/// A chunk-size line longer than this is not HTTP.
const MAX_CHUNK_LINE: usize = 1024;

/// The HTTP door: where it is, and the token its requests carry.
#[derive(Debug, Clone)]
pub struct WebTarget {
    /// Host to connect to (an IPv6 address without brackets).
    host: String,
    /// Port.
    port: u16,
    /// `host:port` as given, for `Host:` and the WebSocket URL.
    authority: String,
    /// `--token`, sent as `Authorization: Bearer …`.
    token: Option<String>,
    /// Where the connections' bytes are counted.
    wire: Arc<WireBytes>,
}

impl WebTarget {
    /// The door at `url` (`http://host:port`, `ws://host:port` or `host:port`; plain, since
    /// these subscribers have no TLS).
    pub fn new(url: &str, token: Option<String>, wire: Arc<WireBytes>) -> Result<WebTarget> {
        let bad = |why: &str| Error::Args(format!("--http-addr '{url}': {why}"));
        let rest = match url.split_once("://") {
            Some(("http" | "ws", rest)) => rest,
            Some((scheme, _)) => {
                return Err(bad(&format!(
                    "the sse and ws subscribers speak plain http:// (or ws://), not {scheme}://"
                )))
            }
            None => url,
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !authority.ends_with(']') => (
                host,
                port.parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))?,
            ),
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let token = token.map(|t| t.trim().to_string());
        if token
            .as_ref()
            .is_some_and(|t| t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(Error::Args(
                "the token is empty or has characters a bearer token cannot have".into(),
            ));
        }
        Ok(WebTarget {
            host: host.to_string(),
            port,
            authority: authority.to_string(),
            token,
            wire,
        })
    }

    async fn connect(&self) -> Result<Counted, StreamError> {
        Counted::connect(&self.host, self.port, Arc::clone(&self.wire))
            .await
            .map_err(|e| {
                StreamError::Io(std::io::Error::new(
                    e.kind(),
                    format!("cannot connect to {}: {e}", self.authority),
                ))
            })
    }
}

/// How an SSE response's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `Transfer-Encoding: chunked` (what the server sends), and where in a chunk we are.
    Chunked(Chunk),
    /// Everything until the connection closes.
    UntilClose,
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// The last (zero-size) chunk came: the body is over.
    Last,
}

/// An event's `event:` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// None given (or one the bench does not know).
    Message,
    /// `snapshot`: the subscription is open.
    Snapshot,
    /// `frame`.
    Frame,
    /// `error`: the stream ends.
    Error,
}

impl Kind {
    fn of(name: &[u8]) -> Kind {
        match name {
            b"snapshot" => Kind::Snapshot,
            b"frame" => Kind::Frame,
            b"error" => Kind::Error,
            _ => Kind::Message,
        }
    }
}

/// A whole event the reader has taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// The snapshot event.
    Snapshot,
    /// A frame: its offset and payload are the reader's `offset` and `payload`.
    Frame,
}

/// One Server-Sent Events subscription on its own HTTP/1.1 connection.
#[derive(Debug)]
pub struct SseStream {
    io: Counted,
    /// Bytes read from the socket, not yet taken into `body`: `raw[raw_at..]`.
    raw: Vec<u8>,
    raw_at: usize,
    framing: Framing,
    /// The body, de-chunked, not yet split into lines: `body[body_at..]`.
    body: Vec<u8>,
    body_at: usize,
    /// The socket said end of file.
    eof: bool,
    /// The event being read: its `event:` and its `data:` lines.
    kind: Kind,
    data: Vec<u8>,
    /// The last frame's offset and decoded payload.
    offset: u64,
    payload: Vec<u8>,
}

impl SseStream {
    /// Opens `GET /v1/topics/{topic}/events?from={from}` and reads up to its snapshot event:
    /// once this returns, every frame published from now on will come.
    pub async fn open(
        target: &WebTarget,
        topic: &str,
        from: u64,
    ) -> Result<SseStream, StreamError> {
        let mut io = target.connect().await?;
        let mut request = format!(
            "GET /v1/topics/{}/events?from={from} HTTP/1.1\r\nHost: {}\r\n\
             Accept: text/event-stream\r\nCache-Control: no-cache\r\n",
            path_segment(topic),
            target.authority
        );
        if let Some(token) = &target.token {
            request.push_str("Authorization: Bearer ");
            request.push_str(token);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        io.write_all(request.as_bytes()).await?;
        let mut sse = SseStream {
            io,
            raw: Vec::with_capacity(READ_AT_ONCE),
            raw_at: 0,
            framing: Framing::UntilClose,
            body: Vec::with_capacity(READ_AT_ONCE),
            body_at: 0,
            eof: false,
            kind: Kind::Message,
            data: Vec::new(),
            offset: 0,
            payload: Vec::new(),
        };
        sse.read_head().await?;
        match sse.next_event().await? {
            Some(Event::Snapshot) => Ok(sse),
            Some(Event::Frame) => Err(StreamError::Refused(
                "the stream began with a frame, not its snapshot event".into(),
            )),
            None => Err(StreamError::Refused(
                "the stream ended before its snapshot event".into(),
            )),
        }
    }

    /// The next frame's offset and payload; `None` when the stream ended without an error
    /// event.
    pub async fn next(&mut self) -> Result<Option<(u64, &[u8])>, StreamError> {
        match self.next_event().await? {
            Some(Event::Frame) => Ok(Some((self.offset, &self.payload))),
            Some(Event::Snapshot) => Err(StreamError::Refused("a second snapshot event".into())),
            None => Ok(None),
        }
    }

    /// Reads the response head: a 200 goes on (chunked or not), anything else is refused
    /// with its status line and the start of its body.
    async fn read_head(&mut self) -> Result<(), StreamError> {
        let end = loop {
            if let Some(at) = find(&self.raw, b"\r\n\r\n") {
                break at;
            }
            if self.raw.len() > MAX_HEAD {
                return Err(StreamError::Refused("an endless response head".into()));
            }
            if self.read_more().await? == 0 {
                return Err(StreamError::Refused(
                    "the connection closed before the response".into(),
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
        self.raw_at = end + 4;
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default();
        if status.split_whitespace().nth(1) != Some("200") {
            let rest = &self.raw[self.raw_at..];
            let body = String::from_utf8_lossy(&rest[..rest.len().min(300)]);
            return Err(StreamError::Refused(format!("{status}: {}", body.trim())));
        }
        let chunked = lines.any(|l| {
            l.split_once(':').is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case("transfer-encoding")
                    && value.to_ascii_lowercase().contains("chunked")
            })
        });
        if chunked {
            self.framing = Framing::Chunked(Chunk::Size);
        }
        Ok(())
    }

    /// The next whole event, reading from the socket only when none is buffered; `None` at
    /// the end of the body.
    async fn next_event(&mut self) -> Result<Option<Event>, StreamError> {
        loop {
            if let Some(event) = self.parse_lines()? {
                return Ok(Some(event));
            }
            if self.dechunk()? {
                continue;
            }
            if self.framing == Framing::Chunked(Chunk::Last) {
                return Ok(None);
            }
            if self.eof {
                return match self.framing {
                    Framing::UntilClose => Ok(None),
                    Framing::Chunked(_) => Err(StreamError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the connection closed in the middle of the stream",
                    ))),
                };
            }
            if self.read_more().await? == 0 {
                self.eof = true;
            }
        }
    }

    /// Reads what the socket has (cancel-safe: `read_buf` either read or did not).
    async fn read_more(&mut self) -> Result<usize, StreamError> {
        if self.raw_at == self.raw.len() {
            self.raw.clear();
            self.raw_at = 0;
        } else if self.raw_at > 0 {
            self.raw.drain(..self.raw_at);
            self.raw_at = 0;
        }
        self.raw.reserve(READ_AT_ONCE);
        Ok(self.io.read_buf(&mut self.raw).await?)
    }

    /// Moves the body's bytes from `raw` to `body`, taking the chunked framing off; true
    /// when it consumed anything.
    fn dechunk(&mut self) -> Result<bool, StreamError> {
        if self.body_at == self.body.len() {
            self.body.clear();
            self.body_at = 0;
        } else if self.body_at > 0 {
            self.body.drain(..self.body_at);
            self.body_at = 0;
        }
        let start = self.raw_at;
        match &mut self.framing {
            Framing::UntilClose => {
                self.body.extend_from_slice(&self.raw[self.raw_at..]);
                self.raw_at = self.raw.len();
            }
            Framing::Chunked(state) => loop {
                let avail = &self.raw[self.raw_at..];
                match *state {
                    Chunk::Size => {
                        let Some(end) = find(avail, b"\r\n") else {
                            if avail.len() > MAX_CHUNK_LINE {
                                return Err(StreamError::Refused("a malformed chunk size".into()));
                            }
                            break;
                        };
                        let size = chunk_size(&avail[..end]).ok_or_else(|| {
                            StreamError::Refused(format!(
                                "a malformed chunk size: {:?}",
                                String::from_utf8_lossy(&avail[..end.min(40)])
                            ))
                        })?;
                        self.raw_at += end + 2;
                        *state = if size == 0 {
                            Chunk::Last
                        } else {
                            Chunk::Data(size)
                        };
                    }
                    Chunk::Data(left) => {
                        if avail.is_empty() {
                            break;
                        }
                        let take = left.min(avail.len());
                        self.body.extend_from_slice(&avail[..take]);
                        self.raw_at += take;
                        *state = if take == left {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(left - take)
                        };
                    }
                    Chunk::DataEnd => {
                        if avail.len() < 2 {
                            break;
                        }
                        if &avail[..2] != b"\r\n" {
                            return Err(StreamError::Refused(
                                "a chunk not followed by CRLF".into(),
                            ));
                        }
                        self.raw_at += 2;
                        *state = Chunk::Size;
                    }
                    Chunk::Last => break,
                }
            },
        }
        Ok(self.raw_at > start)
    }

    /// Takes whole lines off `body` until one ends an event; that event, or `None` when no
    /// whole event is buffered.
    fn parse_lines(&mut self) -> Result<Option<Event>, StreamError> {
        while let Some(len) = find_byte(&self.body[self.body_at..], b'\n') {
            let start = self.body_at;
            self.body_at += len + 1;
            let mut line = &self.body[start..start + len];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            if line.is_empty() {
                if let Some(event) = self.dispatch()? {
                    return Ok(Some(event));
                }
                continue;
            }
            let (name, value) = match find_byte(line, b':') {
                // A comment (`: ping`).
                Some(0) => continue,
                Some(at) => {
                    let value = &line[at + 1..];
                    (&line[..at], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &[][..]),
            };
            match name {
                b"event" => self.kind = Kind::of(value),
                b"data" => {
                    if !self.data.is_empty() {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value);
                }
                // `id:` (a cursor token) and `retry:`: the bench never resumes.
                _ => {}
            }
        }
        Ok(None)
    }

    /// The event whose blank line was just read.
    fn dispatch(&mut self) -> Result<Option<Event>, StreamError> {
        let kind = std::mem::replace(&mut self.kind, Kind::Message);
        let event = match kind {
            Kind::Snapshot => Ok(Some(Event::Snapshot)),
            Kind::Frame => frame_fields(&self.data, &mut self.payload).map(|offset| {
                self.offset = offset;
                Some(Event::Frame)
            }),
            Kind::Error => Err(ended(&self.data, None)),
            Kind::Message => Ok(None),
        };
        self.data.clear();
        event
    }
}

/// One WebSocket with one subscription.
#[derive(Debug)]
pub struct WsStream {
    socket: WebSocketStream<Counted>,
    /// The last frame's decoded payload.
    payload: Vec<u8>,
}

impl WsStream {
    /// Opens `ws://…/v1/ws`, subscribes to `topic` from `from`, and waits for the answer,
    /// which the server sends before the first frame.
    pub async fn open(target: &WebTarget, topic: &str, from: u64) -> Result<WsStream, StreamError> {
        let io = target.connect().await?;
        let mut request = format!("ws://{}/v1/ws", target.authority).into_client_request()?;
        if let Some(token) = &target.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| StreamError::Refused("the token is not a header value".into()))?;
            request.headers_mut().insert(header::AUTHORIZATION, value);
        }
        // A reader per socket and a thousand sockets: tungstenite's 128 KiB read buffer
        // would be 128 MB of the bench.
        let config = WebSocketConfig::default().read_buffer_size(READ_AT_ONCE);
        let (mut socket, _) =
            tokio_tungstenite::client_async_with_config(request, io, Some(config)).await?;
        let subscribe = serde_json::json!({
            "id": 1,
            "subscribe": {"topic": topic, "from": from.to_string()},
        });
        socket.send(Message::text(subscribe.to_string())).await?;
        loop {
            let msg = match socket.next().await {
                Some(msg) => msg?,
                None => {
                    return Err(StreamError::Refused(
                        "the socket closed before the subscribe answer".into(),
                    ))
                }
            };
            match msg {
                Message::Text(text) => {
                    let answer: serde_json::Value = serde_json::from_str(text.as_str())
                        .map_err(|e| StreamError::Refused(format!("not JSON ({e}): {text}")))?;
                    if answer.get("id") == Some(&serde_json::json!(1))
                        && answer.get("result").is_some()
                    {
                        return Ok(WsStream {
                            socket,
                            payload: Vec::new(),
                        });
                    }
                    return Err(StreamError::Refused(format!("subscribe: {answer}")));
                }
                Message::Close(_) => {
                    return Err(StreamError::Refused(
                        "the socket closed before the subscribe answer".into(),
                    ))
                }
                _ => continue,
            }
        }
    }

    /// The next frame's offset and payload; `None` when the socket closed.
    pub async fn next(&mut self) -> Result<Option<(u64, &[u8])>, StreamError> {
        loop {
            let msg = match self.socket.next().await {
                Some(msg) => msg?,
                None => return Ok(None),
            };
            match msg {
                Message::Text(text) => {
                    let json = text.as_bytes();
                    if json.starts_with(b"{\"frame\":") {
                        let offset = frame_fields(json, &mut self.payload)?;
                        return Ok(Some((offset, &self.payload)));
                    }
                    if json.starts_with(b"{\"end\":") {
                        return Err(ended(json, Some("end")));
                    }
                    return Err(StreamError::Refused(format!(
                        "an unexpected message: {}",
                        &text.as_str()[..text.len().min(200)]
                    )));
                }
                Message::Close(_) => return Ok(None),
                // Pings are answered by tungstenite.
                _ => continue,
            }
        }
    }
}

/// The `offset` of a frame's JSON (SSE data or WebSocket push); its payload decoded into
/// `payload`.
fn frame_fields(json: &[u8], payload: &mut Vec<u8>) -> Result<u64, StreamError> {
    let malformed = |what: &str| {
        StreamError::Refused(format!(
            "a frame with {what}: {}",
            String::from_utf8_lossy(&json[..json.len().min(200)])
        ))
    };
    let (offset, rest) =
        string_field(json, b"\"offset\":\"").ok_or_else(|| malformed("no offset"))?;
    let offset = std::str::from_utf8(offset)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| malformed("a bad offset"))?;
    let (encoded, _) =
        string_field(rest, b"\"payload\":\"").ok_or_else(|| malformed("no payload"))?;
    payload.clear();
    STANDARD
        .decode_vec(encoded, payload)
        .map_err(|_| malformed("a payload that is not base64"))?;
    Ok(offset)
}

/// The string value after `key` (which ends with the value's opening quote) and what follows
/// it. Only for values that are never escaped.
fn string_field<'a>(json: &'a [u8], key: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    let at = find(json, key)? + key.len();
    let len = find_byte(&json[at..], b'"')?;
    Some((&json[at..at + len], &json[at + len + 1..]))
}

/// The error that ended a stream, from `{"code","message"}` (SSE) or `{"end":{…}}` (`within`
/// = `end`, WebSocket). Rare, so parsed properly.
fn ended(json: &[u8], within: Option<&str>) -> StreamError {
    let value: serde_json::Value = serde_json::from_slice(json).unwrap_or_default();
    let body = within.map_or(&value, |key| &value[key]);
    let field = |name: &str| body[name].as_str().map(str::to_string);
    match (field("code"), field("message")) {
        (Some(code), Some(message)) => StreamError::Ended { code, message },
        _ => StreamError::Refused(format!(
            "a malformed end of stream: {}",
            String::from_utf8_lossy(&json[..json.len().min(200)])
        )),
    }
}

/// The size of a chunk-size line (`1a2b[;extension]`).
fn chunk_size(line: &[u8]) -> Option<usize> {
    let hex = line.split(|&b| b == b';').next()?;
    let hex = std::str::from_utf8(hex).ok()?.trim();
    if hex.is_empty() || hex.len() > 15 {
        return None;
    }
    usize::from_str_radix(hex, 16).ok()
}

/// Where `needle` first occurs in `haystack`: candidates by their first byte, then compared.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(at) = find_byte(&haystack[from..], first) {
        let at = from + at;
        let after = &haystack[at + 1..];
        // The second byte first: a quote starts many places in JSON, a key at few.
        if rest.is_empty() || (after.first() == rest.first() && after.starts_with(rest)) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Where `byte` first occurs in `haystack`, eight bytes at a time. The bench reads every
/// event's lines and fields with this, so it is worth not doing byte by byte: the bench
/// shares the machine's cores with the server it measures.
fn find_byte(haystack: &[u8], byte: u8) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let pattern = ONES * u64::from(byte);
    let mut words = haystack.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        // A zero byte where `byte` is; the lowest flagged byte is always a true match.
        let x = u64::from_le_bytes(bytes) ^ pattern;
        let found = x.wrapping_sub(ONES) & !x & HIGHS;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| b == byte)
        .map(|i| at + i)
}

/// `s` as one URL path segment (percent-encoding all but the unreserved characters).
fn path_segment(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Result<WebTarget> {
        WebTarget::new(url, None, Arc::default())
    }

    #[test]
    fn http_door_addresses() {
        let t = target("http://127.0.0.1:7071").expect("plain");
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 7071));
        assert_eq!(t.authority, "127.0.0.1:7071");
        let t = target("ws://[::1]:9/").expect("ipv6");
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str()),
            ("::1", 9, "[::1]:9")
        );
        let t = target("localhost").expect("no port");
        assert_eq!((t.host.as_str(), t.port), ("localhost", 80));
        assert!(target("https://127.0.0.1:7071").is_err());
        assert!(target("http://127.0.0.1:x").is_err());
        assert!(target("http://:80").is_err());
    }

    #[test]
    fn frame_fields_pull_offset_and_payload() {
        let payload = b"FCB1\0\0\0\0 \"offset\":\"9\" anything";
        let json = format!(
            "{{\"topic\":\"t\",\"seq_no\":\"17\",\"timestamp\":\"5\",\"offset\":\"42\",\
             \"live\":true,\"payload\":\"{}\",\"text\":\"x\",\"cursor\":\"abc\"}}",
            STANDARD.encode(payload)
        );
        let mut out = Vec::new();
        assert_eq!(frame_fields(json.as_bytes(), &mut out).expect("frame"), 42);
        assert_eq!(out, payload);
        // The buffer is reused, not appended to.
        assert_eq!(frame_fields(json.as_bytes(), &mut out).expect("again"), 42);
        assert_eq!(out, payload);
        assert!(frame_fields(b"{\"offset\":\"1\"}", &mut out).is_err());
        assert!(frame_fields(b"{\"offset\":\"x\",\"payload\":\"\"}", &mut out).is_err());
        assert!(frame_fields(b"{\"offset\":\"1\",\"payload\":\"!!\"}", &mut out).is_err());
    }

    #[test]
    fn ends_name_code_and_message() {
        let e = ended(
            br#"{"code":"NOT_FOUND","message":"topic \"t\" deleted"}"#,
            None,
        );
        assert!(
            matches!(&e, StreamError::Ended { code, message } if code == "NOT_FOUND" && message == "topic \"t\" deleted"),
            "{e}"
        );
        let e = ended(
            br#"{"end":{"topic":"t","code":"UNAVAILABLE","message":"shutting down"}}"#,
            Some("end"),
        );
        assert!(
            matches!(&e, StreamError::Ended { code, .. } if code == "UNAVAILABLE"),
            "{e}"
        );
        assert!(matches!(ended(b"nonsense", None), StreamError::Refused(_)));
    }

    #[test]
    fn finds_bytes_and_needles_anywhere() {
        let hay: Vec<u8> = (0..40u8).map(|i| b'a' + i % 7).collect();
        for byte in 0..=255u8 {
            for start in 0..hay.len() {
                let want = hay[start..].iter().position(|&b| b == byte);
                assert_eq!(find_byte(&hay[start..], byte), want, "{byte} from {start}");
            }
        }
        // A byte just above a match (0x0b after 0x0a) must not be taken for it.
        assert_eq!(
            find_byte(b"\x0b\x0a\x0b\x0b\x0b\x0b\x0b\x0b\x0b", b'\n'),
            Some(1)
        );
        assert_eq!(find_byte(&[0x8a; 9], b'\n'), None);
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"\"offset\":\"1\"", b"\"offset\":\""), Some(0));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"xa", b"a"), Some(1));
        assert_eq!(find(b"", b"a"), None);
    }

    #[test]
    fn chunk_sizes_and_path_segments() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"0"), Some(0));
        assert_eq!(chunk_size(b"FF;name=value"), Some(255));
        assert_eq!(chunk_size(b""), None);
        assert_eq!(chunk_size(b"zz"), None);
        assert_eq!(path_segment("bench-fanout_1.a~"), "bench-fanout_1.a~");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }

    /// A server on loopback that answers one request with `response`, written in pieces
    /// of `piece` bytes so that chunks and lines are split everywhere.
    async fn serve_once(response: Vec<u8>, piece: usize) -> WebTarget {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            while find(&head, b"\r\n\r\n").is_none() {
                let mut b = [0u8; 1024];
                let n = socket.read(&mut b).await.expect("read");
                assert!(n > 0, "request cut short");
                head.extend_from_slice(&b[..n]);
            }
            let head = String::from_utf8(head).expect("utf8");
            assert!(
                head.starts_with("GET /v1/topics/t/events?from=7 HTTP/1.1\r\n"),
                "{head}"
            );
            for part in response.chunks(piece) {
                socket.write_all(part).await.expect("write");
                socket.flush().await.expect("flush");
                tokio::task::yield_now().await;
            }
        });
        target(&format!("http://{addr}")).expect("target")
    }

    fn chunked(events: &[String]) -> Vec<u8> {
        let mut out =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                .to_vec();
        for e in events {
            out.extend_from_slice(format!("{:x}\r\n{e}\r\n", e.len()).as_bytes());
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    fn frame_event(offset: u64, payload: &[u8]) -> String {
        format!(
            "event: frame\nid: tok{offset}\ndata: {{\"seq_no\":\"1\",\"timestamp\":\"2\",\
             \"offset\":\"{offset}\",\"live\":true,\"payload\":\"{}\"}}\n\n",
            STANDARD.encode(payload)
        )
    }

    #[tokio::test]
    async fn sse_events_across_any_split() {
        let mut events = vec![
            "event: snapshot\nid: t0\ndata: {\"snapshot_offset\":\"0\",\"epoch\":\"1\"}\n\n"
                .to_string(),
            ": ping\n\n".to_string(),
        ];
        for i in 0..20u64 {
            events.push(frame_event(i, format!("payload number {i}").as_bytes()));
        }
        events.push(
            "event: error\ndata: {\"code\":\"NOT_FOUND\",\"message\":\"gone\"}\n\n".to_string(),
        );
        let response = chunked(&events);
        for piece in [1, 2, 3, 7, 64, 100_000] {
            let target = serve_once(response.clone(), piece).await;
            let mut sse = SseStream::open(&target, "t", 7).await.expect("open");
            for i in 0..20u64 {
                let (offset, payload) = sse.next().await.expect("frame").expect("some");
                assert_eq!(offset, i, "piece {piece}");
                assert_eq!(payload, format!("payload number {i}").as_bytes());
            }
            match sse.next().await {
                Err(StreamError::Ended { code, .. }) => assert_eq!(code, "NOT_FOUND"),
                other => panic!("piece {piece}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn sse_refusals_and_ends() {
        let target = serve_once(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 40\r\n\r\n{\"code\":\"NOT_FOUND\",\"message\":\"no\"}"
                .to_vec(),
            1000,
        )
        .await;
        match SseStream::open(&target, "t", 7).await {
            Err(StreamError::Refused(why)) => assert!(why.contains("404"), "{why}"),
            other => panic!("{other:?}"),
        }
        // The last chunk without an error event: the stream just ends.
        let snapshot = "event: snapshot\ndata: {}\n\n".to_string();
        let target = serve_once(chunked(&[snapshot.clone(), frame_event(3, b"p")]), 5).await;
        let mut sse = SseStream::open(&target, "t", 7).await.expect("open");
        assert_eq!(sse.next().await.expect("frame").map(|f| f.0), Some(3));
        assert!(sse.next().await.expect("end").is_none());
        // A connection cut inside the chunked body is an error, not an end.
        let mut cut = chunked(&[snapshot, frame_event(3, b"p")]);
        cut.truncate(cut.len() - 10);
        let target = serve_once(cut, 1000).await;
        let mut sse = SseStream::open(&target, "t", 7).await.expect("open");
        assert!(sse.next().await.is_err());
    }
}

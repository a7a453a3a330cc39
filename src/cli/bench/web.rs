//! Subscribers on the HTTP door (`bench fanout --transport sse|ws`), one connection each, as
//! browsers have them.
//!
//! - Server-Sent Events over a small HTTP/1.1 client written here: one `GET`, the chunked
//!   body decoded into a buffer, the events split into lines. No HTTP library: the bench
//!   shares the machine with the server, and every cycle it spends is one the server lacks.
//! - WebSocket, also by hand (RFC 6455's client side): one socket, one `subscribe`, then
//!   pushes parsed where they were read.
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// A connection and the bytes read from it not yet consumed: `raw[at..]`.
#[derive(Debug)]
struct Inbox {
    io: Counted,
    raw: Vec<u8>,
    at: usize,
}

impl Inbox {
    fn new(io: Counted) -> Inbox {
        Inbox {
            io,
            raw: Vec::with_capacity(READ_AT_ONCE),
            at: 0,
        }
    }

    /// Reads what the socket has (cancel-safe: `read_buf` either read or did not).
    async fn read_more(&mut self) -> Result<usize, StreamError> {
        compact(&mut self.raw, &mut self.at);
        self.raw.reserve(READ_AT_ONCE);
        Ok(self.io.read_buf(&mut self.raw).await?)
    }

    /// Reads a response head with status `status` and returns it (status line first);
    /// another status is refused with its status line and the start of its body.
    async fn read_head(&mut self, status: &str) -> Result<String, StreamError> {
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
        self.at = end + 4;
        let line = head.split("\r\n").next().unwrap_or_default();
        if line.split_whitespace().nth(1) != Some(status) {
            let rest = &self.raw[self.at..];
            let body = String::from_utf8_lossy(&rest[..rest.len().min(300)]);
            return Err(StreamError::Refused(format!("{line}: {}", body.trim())));
        }
        Ok(head)
    }
}

/// Drops the consumed bytes `buf[..at]`, keeping the rest at the start.
fn compact(buf: &mut Vec<u8>, at: &mut usize) {
    if *at == buf.len() {
        buf.clear();
    } else if *at > 0 {
        buf.drain(..*at);
    }
    *at = 0;
}

/// A response head's header lines as `(name, value)`, both trimmed.
fn header_lines(head: &str) -> impl Iterator<Item = (&str, &str)> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, value)| (name.trim(), value.trim()))
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
    /// The connection; its bytes not yet taken into `body`.
    inbox: Inbox,
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
            inbox: Inbox::new(io),
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
        let head = self.inbox.read_head("200").await?;
        let chunked = header_lines(&head).any(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
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
            if self.inbox.read_more().await? == 0 {
                self.eof = true;
            }
        }
    }

    /// Moves the body's bytes from `raw` to `body`, taking the chunked framing off; true
    /// when it consumed anything.
    fn dechunk(&mut self) -> Result<bool, StreamError> {
        compact(&mut self.body, &mut self.body_at);
        let start = self.inbox.at;
        match &mut self.framing {
            Framing::UntilClose => {
                self.body
                    .extend_from_slice(&self.inbox.raw[self.inbox.at..]);
                self.inbox.at = self.inbox.raw.len();
            }
            Framing::Chunked(state) => loop {
                let avail = &self.inbox.raw[self.inbox.at..];
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
                        self.inbox.at += end + 2;
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
                        self.inbox.at += take;
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
                        self.inbox.at += 2;
                        *state = Chunk::Size;
                    }
                    Chunk::Last => break,
                }
            },
        }
        Ok(self.inbox.at > start)
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

/// Most bytes one WebSocket message may have (a frame of the largest payload, in base64 and
/// as text, fits many times over).
const MAX_WS_MESSAGE: usize = 256 << 20;

/// Where a whole WebSocket message is, once `next_message` found one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WsMessage {
    /// A text or binary message in one frame: `raw[start..end]`, read in place.
    Whole(usize, usize),
    /// A message that came in fragments, gathered in `partial`.
    Gathered,
    /// The server closed the socket.
    Closed,
}

/// One WebSocket with one subscription, spoken by hand (RFC 6455, client side): the
/// upgrade, masked client frames, and the server's frames parsed where they were read, with
/// no allocation or copy per message. The bench shares the machine with the server, as for
/// SSE: every cycle it spends is one the server lacks.
#[derive(Debug)]
pub struct WsStream {
    /// The connection; its bytes not yet parsed.
    inbox: Inbox,
    /// A fragmented message so far, while `fragmented`.
    partial: Vec<u8>,
    fragmented: bool,
    /// The last frame's decoded payload.
    payload: Vec<u8>,
}

impl WsStream {
    /// Opens `ws://…/v1/ws`, subscribes to `topic` from `from`, and waits for the answer,
    /// which the server sends before the first frame.
    pub async fn open(target: &WebTarget, topic: &str, from: u64) -> Result<WsStream, StreamError> {
        let io = target.connect().await?;
        let key = STANDARD.encode(rand::random::<[u8; 16]>());
        let mut request = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
            target.authority
        );
        if let Some(token) = &target.token {
            request.push_str("Authorization: Bearer ");
            request.push_str(token);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        let mut ws = WsStream {
            inbox: Inbox::new(io),
            partial: Vec::new(),
            fragmented: false,
            payload: Vec::new(),
        };
        ws.inbox.io.write_all(request.as_bytes()).await?;
        ws.read_upgrade(&key).await?;
        let subscribe = serde_json::json!({
            "id": 1,
            "subscribe": {"topic": topic, "from": from.to_string()},
        });
        ws.send(OP_TEXT, subscribe.to_string().as_bytes()).await?;
        let answer = match ws.next_message().await? {
            WsMessage::Whole(start, end) => &ws.inbox.raw[start..end],
            WsMessage::Gathered => &ws.partial[..],
            WsMessage::Closed => {
                return Err(StreamError::Refused(
                    "the socket closed before the subscribe answer".into(),
                ))
            }
        };
        let answer: serde_json::Value = serde_json::from_slice(answer).map_err(|e| {
            StreamError::Refused(format!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            ))
        })?;
        if answer.get("id") == Some(&serde_json::json!(1)) && answer.get("result").is_some() {
            return Ok(ws);
        }
        Err(StreamError::Refused(format!("subscribe: {answer}")))
    }

    /// The next frame's offset and payload; `None` when the socket closed.
    pub async fn next(&mut self) -> Result<Option<(u64, &[u8])>, StreamError> {
        let json = match self.next_message().await? {
            WsMessage::Whole(start, end) => &self.inbox.raw[start..end],
            WsMessage::Gathered => &self.partial[..],
            WsMessage::Closed => return Ok(None),
        };
        if json.starts_with(b"{\"frame\":") {
            let offset = frame_fields(json, &mut self.payload)?;
            return Ok(Some((offset, &self.payload)));
        }
        if json.starts_with(b"{\"end\":") {
            return Err(ended(json, Some("end")));
        }
        Err(StreamError::Refused(format!(
            "an unexpected message: {}",
            String::from_utf8_lossy(&json[..json.len().min(200)])
        )))
    }

    /// Reads the upgrade's answer: `101` with the accept value `key` asks for, or a refusal
    /// with the status line and the start of the body.
    async fn read_upgrade(&mut self, key: &str) -> Result<(), StreamError> {
        let head = self.inbox.read_head("101").await?;
        let want = accept_value(key);
        let accepted = header_lines(&head).any(|(name, value)| {
            name.eq_ignore_ascii_case("sec-websocket-accept") && value == want
        });
        if !accepted {
            return Err(StreamError::Refused(
                "the upgrade's Sec-WebSocket-Accept does not answer our key".into(),
            ));
        }
        Ok(())
    }

    /// The next whole text or binary message; pings are answered on the way, pongs skipped.
    async fn next_message(&mut self) -> Result<WsMessage, StreamError> {
        loop {
            let Some((fin, opcode, start, end)) = self.parse_frame()? else {
                if self.inbox.read_more().await? == 0 {
                    return Err(StreamError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the connection closed without a close frame",
                    )));
                }
                continue;
            };
            self.inbox.at = end;
            match opcode {
                OP_CONTINUATION if self.fragmented => {
                    if self.partial.len() + (end - start) > MAX_WS_MESSAGE {
                        return Err(StreamError::Refused("a message too large".into()));
                    }
                    self.partial.extend_from_slice(&self.inbox.raw[start..end]);
                    if fin {
                        self.fragmented = false;
                        return Ok(WsMessage::Gathered);
                    }
                }
                OP_TEXT | OP_BINARY if !self.fragmented => {
                    if fin {
                        return Ok(WsMessage::Whole(start, end));
                    }
                    self.partial.clear();
                    self.partial.extend_from_slice(&self.inbox.raw[start..end]);
                    self.fragmented = true;
                }
                OP_CLOSE => return Ok(WsMessage::Closed),
                OP_PING => {
                    let ping = self.inbox.raw[start..end].to_vec();
                    self.send(OP_PONG, &ping).await?;
                }
                OP_PONG => {}
                _ => {
                    return Err(StreamError::Refused(format!(
                        "an unexpected WebSocket frame (opcode {opcode})"
                    )))
                }
            }
        }
    }

    /// The frame at `raw[raw_at..]` if it is all there: `(fin, opcode, payload start, end)`.
    fn parse_frame(&self) -> Result<Option<(bool, u8, usize, usize)>, StreamError> {
        let buf = &self.inbox.raw[self.inbox.at..];
        let [b0, b1, rest @ ..] = buf else {
            return Ok(None);
        };
        if b1 & 0x80 != 0 {
            return Err(StreamError::Refused(
                "a masked frame from the server".into(),
            ));
        }
        if b0 & 0x70 != 0 {
            return Err(StreamError::Refused(
                "a frame with reserved bits set".into(),
            ));
        }
        let (len, header) = match b1 & 0x7f {
            126 => match rest {
                [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 4),
                _ => return Ok(None),
            },
            127 => match rest.get(..8) {
                Some(b) => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(b);
                    (u64::from_be_bytes(n), 10)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= MAX_WS_MESSAGE)
            .ok_or_else(|| StreamError::Refused("a frame too large".into()))?;
        if buf.len() < header + len {
            return Ok(None);
        }
        let start = self.inbox.at + header;
        Ok(Some((b0 & 0x80 != 0, b0 & 0x0f, start, start + len)))
    }

    /// Sends one whole message as a masked frame.
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), StreamError> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = rand::random::<[u8; 4]>();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.inbox.io.write_all(&frame).await?;
        Ok(())
    }
}

const OP_CONTINUATION: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// The `Sec-WebSocket-Accept` a server answers `key` with.
fn accept_value(key: &str) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    STANDARD.encode(h.finalize())
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

    /// A request's head, read whole.
    async fn request_head(socket: &mut tokio::net::TcpStream) -> String {
        let mut head = Vec::new();
        while find(&head, b"\r\n\r\n").is_none() {
            let mut b = [0u8; 1024];
            let n = socket.read(&mut b).await.expect("read");
            assert!(n > 0, "request cut short");
            head.extend_from_slice(&b[..n]);
        }
        String::from_utf8(head).expect("utf8")
    }

    /// A listener on a free loopback port, and its address.
    async fn loopback_listener() -> (tokio::net::TcpListener, std::net::SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        (listener, addr)
    }

    /// A server on loopback that answers one request with `response`, written in pieces
    /// of `piece` bytes so that chunks and lines are split everywhere.
    async fn serve_once(response: Vec<u8>, piece: usize) -> WebTarget {
        let (listener, addr) = loopback_listener().await;
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let head = request_head(&mut socket).await;
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

    /// A server frame (unmasked).
    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= 65535 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    /// Reads one masked client frame: `(opcode, unmasked payload)`.
    async fn client_frame(socket: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        socket.read_exact(&mut h).await.expect("frame head");
        assert_eq!(h[1] & 0x80, 0x80, "client frames are masked");
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                socket.read_exact(&mut b).await.expect("len16");
                usize::from(u16::from_be_bytes(b))
            }
            127 => panic!("no long client frames here"),
            n => usize::from(n),
        };
        let mut mask = [0u8; 4];
        socket.read_exact(&mut mask).await.expect("mask");
        let mut payload = vec![0u8; len];
        socket.read_exact(&mut payload).await.expect("payload");
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        (h[0] & 0x0f, payload)
    }

    fn push(offset: u64, payload: &[u8]) -> Vec<u8> {
        format!(
            "{{\"frame\":{{\"topic\":\"t\",\"seq_no\":\"1\",\"timestamp\":\"2\",\"offset\":\"{offset}\",\
             \"live\":true,\"payload\":\"{}\",\"cursor\":\"c\"}}}}",
            STANDARD.encode(payload)
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn websocket_frames_of_every_length_fragmented_and_pinged_across_any_split() {
        let big = vec![7u8; 70_000];
        for piece in [1, 3, 64, 1 << 20] {
            let (listener, addr) = loopback_listener().await;
            let big2 = big.clone();
            let server = tokio::spawn(async move {
                let (mut socket, _) = listener.accept().await.expect("accept");
                let head = request_head(&mut socket).await;
                assert!(head.starts_with("GET /v1/ws HTTP/1.1\r\n"), "{head}");
                let key = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                    .expect("key")
                    .to_string();
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: {}\r\n\r\n",
                    accept_value(&key)
                );
                socket.write_all(answer.as_bytes()).await.expect("101");
                let (op, sub) = client_frame(&mut socket).await;
                assert_eq!(op, OP_TEXT);
                let sub: serde_json::Value = serde_json::from_slice(&sub).expect("json");
                assert_eq!(sub["subscribe"]["topic"], "t");
                let mut out = Vec::new();
                // The answer in two fragments, a ping, then pushes of 7-, 16- and 64-bit
                // lengths, one fragmented around a pong, then close.
                let answer = br#"{"id":1,"result":{"topic":"t"}}"#;
                out.extend(server_frame(false, OP_TEXT, &answer[..10]));
                out.extend(server_frame(true, OP_CONTINUATION, &answer[10..]));
                out.extend(server_frame(true, OP_PING, b"hi"));
                out.extend(server_frame(true, OP_TEXT, &push(0, b"a")));
                out.extend(server_frame(true, OP_TEXT, &push(1, &[9u8; 200])));
                out.extend(server_frame(true, OP_TEXT, &push(2, &big2)));
                let p3 = push(3, b"split");
                out.extend(server_frame(false, OP_TEXT, &p3[..20]));
                out.extend(server_frame(true, OP_PONG, b""));
                out.extend(server_frame(true, OP_CONTINUATION, &p3[20..]));
                out.extend(server_frame(true, OP_CLOSE, b""));
                for part in out.chunks(piece) {
                    socket.write_all(part).await.expect("write");
                    tokio::task::yield_now().await;
                }
                // The pong answers the ping with its payload.
                let (op, pong) = client_frame(&mut socket).await;
                assert_eq!((op, pong.as_slice()), (OP_PONG, &b"hi"[..]));
            });
            let t = target(&format!("http://{addr}")).expect("target");
            let mut ws = WsStream::open(&t, "t", 0).await.expect("open");
            let want: [&[u8]; 4] = [b"a", &[9u8; 200], &big, b"split"];
            for (i, payload) in want.iter().enumerate() {
                let (offset, got) = ws.next().await.expect("frame").expect("some");
                assert_eq!((offset, got), (i as u64, *payload), "piece {piece}");
            }
            assert!(ws.next().await.expect("close").is_none());
            server.await.expect("server");
        }
    }

    #[tokio::test]
    async fn websocket_refusals() {
        let cases: [(&[u8], &str); 2] = [
            (
                b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\nno",
                "401",
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: wrong\r\n\r\n",
                "Accept",
            ),
        ];
        for (response, why_has) in cases {
            let target = serve_upgrade_answer(response.to_vec()).await;
            match WsStream::open(&target, "t", 0).await {
                Err(StreamError::Refused(why)) => assert!(why.contains(why_has), "{why}"),
                other => panic!("{other:?}"),
            }
        }
    }

    /// A server that answers an upgrade request with `response`, whatever it asked.
    async fn serve_upgrade_answer(response: Vec<u8>) -> WebTarget {
        let (listener, addr) = loopback_listener().await;
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            request_head(&mut socket).await;
            socket.write_all(&response).await.expect("write");
        });
        target(&format!("http://{addr}")).expect("target")
    }
}

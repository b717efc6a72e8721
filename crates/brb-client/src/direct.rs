//! An event stream read in the caller's own task, over a plain HTTP/1.1 connection.
//!
//! Why not reqwest here: reqwest (hyper's client) drives each connection in a task of its own
//! and hands body chunks to the reader through a channel, so every delivery wakes the
//! connection task, then the reader, then whatever waits on the gate. With ten thousand gates
//! on a host that is most of the SDK's CPU per press (BENCHMARKS.md). This module writes one
//! `GET`, reads the answer's head with `httparse`, and decodes the chunked body as the
//! caller polls: one task, one wake-up per delivery.
//!
//! It serves `http://` URLs without a proxy in the environment. Everything else (TLS, a
//! forward proxy) goes through reqwest, which knows how; `Client::events` decides.
//! The codec parts (`crate::chunked`, `parse_head`) do no I/O and are property-tested.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::chunked::ChunkDecoder;
use crate::sse::Parser;
use crate::{ClientError, Result, StreamItem};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Longest error body read (an error answer is small JSON).
const MAX_ERROR_BODY: usize = 64 * 1024;
const READ_BUF: usize = 4096;

/// Where a base URL points, when this module can serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    host: String,
    port: u16,
    /// The `Host:` header.
    authority: String,
    /// The base URL's path (no trailing slash), prefixed to every request.
    prefix: String,
}

/// The target for `base`, or `None` when reqwest should handle it: `https://`, or a proxy
/// configured in the environment for plain HTTP.
pub(crate) fn target(base: &str) -> Option<Target> {
    let proxy = ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
    target_with(base, proxy)
}

fn target_with(base: &str, proxy_in_env: bool) -> Option<Target> {
    let url = reqwest::Url::parse(base).ok()?;
    if url.scheme() != "http" || proxy_in_env || url.query().is_some() {
        return None;
    }
    if !url.username().is_empty() || url.password().is_some() {
        return None;
    }
    // IPv6 literals come bracketed; `connect` wants them bare.
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url.port_or_known_default()?;
    let authority = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str()?),
        None => url.host_str()?.to_string(),
    };
    Some(Target {
        host,
        port,
        authority,
        prefix: url.path().trim_end_matches('/').to_string(),
    })
}

/// What opening a stream gave.
pub(crate) enum Opened {
    Stream(Box<DirectStream>),
    /// The server answered without a stream: status and body, for the caller's error.
    Refused(u16, Vec<u8>),
}

/// Sends `GET {prefix}{path}` and reads the answer's head.
pub(crate) async fn open(
    t: &Target,
    path: &str,
    token: Option<&str>,
    last_event_id: Option<&str>,
    local: Option<std::net::IpAddr>,
) -> Result<Opened> {
    let unreachable = |what: &str, e: &dyn std::fmt::Display| {
        ClientError::Unreachable(format!("http://{}: {what}: {e}", t.authority))
    };
    let mut head = format!(
        "GET {}{path} HTTP/1.1\r\nhost: {}\r\nuser-agent: brb-client/{}\r\naccept: text/event-stream\r\n",
        t.prefix,
        t.authority,
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in [
        ("authorization", token.map(|t| format!("Bearer {t}"))),
        ("last-event-id", last_event_id.map(str::to_string)),
    ] {
        if let Some(v) = value {
            if v.bytes().any(|b| b < 0x20 || b == 0x7f) {
                return Err(ClientError::Config(format!(
                    "the {name} header would contain a control character"
                )));
            }
            head.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connect(t, local))
        .await
        .map_err(|_| unreachable("connecting", &"timed out"))?
        .map_err(|e| unreachable("connecting", &e))?;
    let _ = tcp.set_nodelay(true);
    // A peer that vanished without a FIN (a cable, a crashed VM) is noticed eventually even
    // by a reader with no timeout of its own.
    let _ = socket2::SockRef::from(&tcp)
        .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(Duration::from_secs(15)));
    let mut s = DirectStream {
        tcp,
        buf: BytesMut::with_capacity(READ_BUF),
        body: Body::Close,
        parser: Parser::new(),
        ready: VecDeque::new(),
        ended: false,
        authority: t.authority.clone(),
    };
    s.tcp
        .write_all(head.as_bytes())
        .await
        .map_err(|e| unreachable("sending the request", &e))?;
    let (status, body) = loop {
        if let Some(h) = parse_head(&s.buf).map_err(|m| s.protocol(m))? {
            s.buf.advance(h.len);
            break (h.status, h.body);
        }
        if s.buf.len() > MAX_HEAD {
            return Err(s.protocol("the answer's head is too long".into()));
        }
        s.fill().await?;
        if s.ended {
            return Err(unreachable("reading the answer", &"connection closed"));
        }
    };
    s.body = body;
    if (200..300).contains(&status) {
        return Ok(Opened::Stream(Box::new(s)));
    }
    // The error body, as far as it comes (its framing, or until close), for the message.
    let mut out = Vec::new();
    loop {
        s.decode_into(&mut out).map_err(|m| s.protocol(m))?;
        if s.body.done() || out.len() > MAX_ERROR_BODY || s.ended {
            break;
        }
        s.fill().await?;
    }
    Ok(Opened::Refused(status, out))
}

/// Connects to `t`, from `local` when given (to the target's first address of the same
/// family).
async fn connect(t: &Target, local: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let Some(local) = local else {
        return TcpStream::connect((t.host.as_str(), t.port)).await;
    };
    let mut last = None;
    for addr in tokio::net::lookup_host((t.host.as_str(), t.port)).await? {
        if addr.is_ipv4() != local.is_ipv4() {
            continue;
        }
        let socket = if local.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(local, 0))?;
        match socket.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("no address of {} in the family of {local}", t.host),
        )
    }))
}

/// The answer's status and how its body is framed.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    len: usize,
    status: u16,
    body: Body,
}

/// Parses a response head; `Ok(None)` while incomplete.
fn parse_head(buf: &[u8]) -> std::result::Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("unreadable response head: {e}")),
    };
    let status = res.code.ok_or("response without a status")?;
    let mut body = Body::Close;
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.split(',').any(|p| p.trim() == "chunked") {
                body = Body::Chunked(ChunkDecoder::default());
            }
        } else if h.name.eq_ignore_ascii_case("content-length") && !matches!(body, Body::Chunked(_))
        {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or("unreadable content-length")?;
            body = Body::Length(n);
        }
    }
    Ok(Some(Head { len, status, body }))
}

/// How the body ends.
#[derive(Debug, PartialEq, Eq)]
enum Body {
    Chunked(ChunkDecoder),
    /// Bytes left.
    Length(u64),
    /// Until the server closes.
    Close,
}

impl Body {
    fn done(&self) -> bool {
        match self {
            Body::Chunked(c) => c.is_done(),
            Body::Length(n) => *n == 0,
            Body::Close => false,
        }
    }
}

/// A connected event stream; items come out of [`DirectStream::next_item`].
pub(crate) struct DirectStream {
    tcp: TcpStream,
    buf: BytesMut,
    body: Body,
    parser: Parser,
    ready: VecDeque<Result<StreamItem>>,
    /// The server closed the connection.
    ended: bool,
    authority: String,
}

impl DirectStream {
    fn protocol(&self, message: String) -> ClientError {
        ClientError::Protocol {
            url: format!("http://{}", self.authority),
            message,
        }
    }

    /// Reads more into `buf`; sets `ended` at EOF.
    async fn fill(&mut self) -> Result<()> {
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(READ_BUF);
        }
        match self.tcp.read_buf(&mut self.buf).await {
            Ok(0) => {
                self.ended = true;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(ClientError::Unreachable(format!(
                "event stream from http://{} broke: {e}",
                self.authority
            ))),
        }
    }

    /// Moves decoded body bytes from `buf` to `out`.
    fn decode_into(&mut self, out: &mut Vec<u8>) -> std::result::Result<(), String> {
        drain_body(&mut self.body, &mut self.buf, |p| out.extend_from_slice(p))
    }

    /// Feeds what `buf` holds to the SSE parser; queues the events, or `Alive` when payload
    /// bytes completed none (a keep-alive comment).
    fn parse_buffered(&mut self) -> std::result::Result<(), String> {
        let mut events = Vec::new();
        let mut payload = false;
        let mut err = None;
        let parser = &mut self.parser;
        drain_body(&mut self.body, &mut self.buf, |p| {
            payload |= !p.is_empty();
            if err.is_none() {
                match parser.feed(p) {
                    Ok(evs) => events.extend(evs),
                    Err(e) => err = Some(e),
                }
            }
        })?;
        if let Some(e) = err {
            return Err(e.to_string());
        }
        if events.is_empty() {
            if payload {
                self.ready.push_back(Ok(StreamItem::Alive));
            }
        } else {
            self.ready
                .extend(events.into_iter().map(|e| Ok(StreamItem::Event(e))));
        }
        Ok(())
    }

    /// The next item; `None` when the stream ended (the server closed it or finished it).
    pub(crate) async fn next_item(&mut self) -> Option<Result<StreamItem>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            // Bytes may be waiting from the read that completed the head: parse before
            // reading more (the first event often arrives in the same segment).
            if !self.buf.is_empty() {
                if let Err(m) = self.parse_buffered() {
                    self.ended = true;
                    return Some(Err(self.protocol(m)));
                }
                if !self.ready.is_empty() {
                    continue;
                }
            }
            if self.body.done() || self.ended {
                return None;
            }
            if let Err(e) = self.fill().await {
                self.ended = true;
                return Some(Err(e));
            }
        }
    }
}

/// Takes the body's payload from the front of `buf` (as far as its framing allows).
fn drain_body(
    body: &mut Body,
    buf: &mut BytesMut,
    mut f: impl FnMut(&[u8]),
) -> std::result::Result<(), String> {
    let n = match body {
        Body::Chunked(c) => c.decode(buf, &mut f)?,
        Body::Length(left) => {
            let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
            f(&buf[..n]);
            *left -= n as u64;
            n
        }
        Body::Close => {
            f(buf);
            buf.len()
        }
    };
    buf.advance(n);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn heads_name_status_and_framing() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.len), (200, 80));
        assert!(matches!(h.body, Body::Chunked(_)));
        let h = parse_head(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 12\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.body), (401, Body::Length(12)));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nx: y\r\n").unwrap(), None);
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
    }

    #[test]
    fn targets_are_plain_http_without_a_proxy() {
        let t = target_with("http://127.0.0.1:7070/brb/", false).unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.authority.as_str(),
                t.prefix.as_str()
            ),
            ("127.0.0.1", 7070, "127.0.0.1:7070", "/brb")
        );
        let t = target_with("http://[::1]:7070", false).unwrap();
        assert_eq!(
            (t.host.as_str(), t.authority.as_str(), t.prefix.as_str()),
            ("::1", "[::1]:7070", "")
        );
        let t = target_with("http://localhost", false).unwrap();
        assert_eq!((t.port, t.authority.as_str()), (80, "localhost"));
        assert_eq!(target_with("https://brb.example.com", false), None);
        assert_eq!(target_with("http://127.0.0.1:7070", true), None);
        assert_eq!(target_with("http://u:p@127.0.0.1:7070", false), None);
    }

    /// A one-shot server on a loopback port that writes `answer` in one piece, then holds the
    /// connection open until the test ends; returns the target and the request it read.
    async fn serve_once(answer: &'static [u8]) -> (Target, tokio::sync::oneshot::Receiver<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).await.unwrap();
                req.extend_from_slice(&b[..n]);
            }
            let _ = tx.send(String::from_utf8_lossy(&req).into_owned());
            s.write_all(answer).await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        (
            target_with(&format!("http://127.0.0.1:{port}/p"), false).unwrap(),
            rx,
        )
    }

    #[tokio::test]
    async fn an_event_in_the_same_segment_as_the_head_is_not_held_back() {
        let (t, req) = serve_once(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1e\r\nevent: switch\nid: 3\ndata: {}\n\n\r\n",
        )
        .await;
        let Opened::Stream(mut s) = open(&t, "/api/v1/events", Some("tok"), Some("2"), None)
            .await
            .unwrap()
        else {
            panic!("refused");
        };
        let req = req.await.unwrap();
        assert!(
            req.starts_with("GET /p/api/v1/events HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(
            req.contains("authorization: Bearer tok\r\n") && req.contains("last-event-id: 2\r\n"),
            "{req}"
        );
        let item = tokio::time::timeout(Duration::from_secs(2), s.next_item())
            .await
            .expect("the buffered event must come out without more bytes arriving");
        match item {
            Some(Ok(StreamItem::Event(e))) => assert_eq!(
                (e.event.as_str(), e.id.as_deref(), e.data.as_str()),
                ("switch", Some("3"), "{}")
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn refusals_carry_status_and_body() {
        let (t, _) = serve_once(
            b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 7\r\nconnection: close\r\n\r\n{\"a\":1}",
        )
        .await;
        match open(&t, "/x", None, None, None).await.unwrap() {
            Opened::Refused(status, body) => {
                assert_eq!((status, body.as_slice()), (401, &b"{\"a\":1}"[..]))
            }
            Opened::Stream(_) => panic!("not a stream"),
        }
    }

    #[tokio::test]
    async fn control_characters_in_headers_are_refused_before_sending() {
        let t = target_with("http://127.0.0.1:9", false).unwrap();
        let e = open(&t, "/x", Some("a\r\nx: y"), None, None)
            .await
            .err()
            .unwrap();
        assert!(matches!(e, ClientError::Config(_)), "{e:?}");
    }

    proptest! {
        /// Garbage never panics.
        #[test]
        fn garbage_heads_are_errors_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_head(&bytes);
        }
    }
}

//! The accept loop: plain TCP or TLS, HTTP/1.1, the axum router per request.
//!
//! Why not `axum::serve`: we need the TLS handshake off the accept path (one slow or hostile
//! client must not hold up the thousands reconnecting after a restart), a header-read timeout
//! and a cap on the request head (slowloris), and the client certificate of the connection
//! next to its address.
//!
//! Why the first request head is read here and not by hyper: most connections to the control
//! plane are workers' event streams, one long response each. Served through hyper, every
//! delivery goes through its per-connection dispatcher, three body layers and its buffers
//! (~8 KiB each); that was most of the server's CPU per delivery and memory per watcher. So
//! the loop reads and parses the first head itself (within the header-read timeout and the
//! head cap). An event-stream `GET` is answered by the router as usual (auth, token lease,
//! replay), but the stream comes back as a [`sse::Takeover`] and is written straight to the
//! socket: by the fan-out writer threads for a switch stream on plain TCP ([`fanout::serve`]),
//! else by the stream's own task ([`sse::write_direct`]); its other answers (401, 404, 429) are
//! written here and the
//! connection closes. Everything else — other requests, a head that does not parse, pipelined
//! bytes — goes to hyper with the bytes already read put back in front ([`Rewind`]), and
//! hyper's own header-read timer guards the connection's later requests.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, Version, header};
use bytes::{Buf as _, Bytes, BytesMut};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::sync::mpsc;
use tower::ServiceExt as _;

use crate::tls::{ClientCert, Tls, fingerprint};
use crate::{fanout, sse};

/// The plain TCP socket under a connection, when there is no TLS in between (the fan-out
/// writer sends to sockets directly).
pub trait MaybeTcp: Sized {
    fn into_tcp(self) -> Result<tokio::net::TcpStream, Self>;
}

impl MaybeTcp for tokio::net::TcpStream {
    fn into_tcp(self) -> Result<tokio::net::TcpStream, Self> {
        Ok(self)
    }
}

impl MaybeTcp for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn into_tcp(self) -> Result<tokio::net::TcpStream, Self> {
        Err(self)
    }
}

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown starts, how long open connections get to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// First read buffer for a request head: enough for any head our clients send.
const HEAD_BUF: usize = 1024;
/// Most headers a head read here may have; a head with more goes to hyper (which has its own
/// limit and answers).
const MAX_HEADERS: usize = 48;
/// An error answer on a directly served request is small JSON; this bounds collecting it.
const MAX_DIRECT_BODY: usize = 64 * 1024;

#[derive(Clone, Copy)]
pub struct ConnSettings {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    /// Connections open at once at most (see [`connection_cap`]).
    pub max_connections: usize,
}

/// Files kept free for everything that is not a client connection: the database pool, the
/// SQLite files, the log, TLS material, the runtime's own descriptors.
pub const FD_RESERVE: u64 = 512;

/// The connection cap: the configured one, or (0) the open-files limit less [`FD_RESERVE`].
/// Beyond the limit `accept` fails with EMFILE and connections the kernel already completed
/// wait in the accept queue until their clients time out (10 s in our SDK): after a restart
/// that turned a one-second reconnect storm into half a minute (BENCHMARKS.md). A connection
/// reset at once costs its client a microsecond and a try at the next replica.
pub fn connection_cap(configured: usize, open_files_limit: Option<u64>) -> usize {
    if configured > 0 {
        return configured;
    }
    match open_files_limit {
        Some(l) => l.saturating_sub(FD_RESERVE).max(64) as usize,
        None => usize::MAX,
    }
}

/// The process's soft limit on open files (None: unlimited).
pub fn open_files_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Counts a connection as open until dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: Option<Arc<Tls>>,
    settings: ConnSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .keep_alive(true);
    let http = Arc::new(http);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Every connection task holds a sender; when all are dropped, every connection is done.
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    let open = Arc::new(AtomicUsize::new(0));
    let mut refused: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if open.load(Ordering::Acquire) >= settings.max_connections {
            // At the cap: a reset now (SO_LINGER 0 sends RST on close, never blocks), not
            // a connection left to wait for a descriptor that will not come.
            let _ = tcp.set_zero_linger();
            drop(tcp);
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    remote = %peer,
                    cap = settings.max_connections,
                    refused,
                    "at the connection cap: resetting new connections"
                );
            }
            continue;
        }
        open.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(Arc::clone(&open));
        let _ = tcp.set_nodelay(true);
        let conn = Conn {
            _slot: slot,
            router: router.clone(),
            http: Arc::clone(&http),
            graceful: graceful.watcher(),
            settings,
            peer,
            _alive: alive.clone(),
        };
        match &tls {
            None => {
                tokio::spawn(conn.run(tcp, None));
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                tokio::spawn(async move {
                    let stream =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::info!(remote = %peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::info!(remote = %peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| ClientCert(fingerprint(c.as_ref())));
                    conn.run(stream, cert).await;
                });
            }
        }
    }
    drop(listener);
    drop(alive);
    // Hyper's connections finish their in-flight requests; event streams (both kinds) end
    // themselves, woken by `begin_shutdown`.
    let drain = async {
        graceful.shutdown().await;
        let _ = all_done.recv().await;
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
}

/// One accepted connection, before we know what it asks for.
struct Conn {
    router: axum::Router,
    http: Arc<hyper::server::conn::http1::Builder>,
    graceful: hyper_util::server::graceful::Watcher,
    settings: ConnSettings,
    peer: SocketAddr,
    _alive: mpsc::Sender<()>,
    _slot: Slot,
}

impl Conn {
    async fn run<IO>(self, mut io: IO, cert: Option<ClientCert>)
    where
        IO: AsyncRead + AsyncWrite + MaybeTcp + Unpin + Send + 'static,
    {
        let mut buf = BytesMut::with_capacity(HEAD_BUF);
        let limit = self.settings.max_header_bytes.max(1024);
        let head = tokio::time::timeout(
            self.settings.header_read_timeout,
            read_head(&mut io, &mut buf, limit),
        )
        .await;
        match head {
            // Slowloris, or a client that connected and said nothing: close, as hyper did.
            Err(_) => return,
            // Closed or failed before a head: nothing to answer.
            Ok(Err(_)) => return,
            // The head passed the cap: the same JSON error as every other, then close. (Not
            // hyper's: it would read on up to its own, larger minimum buffer.)
            Ok(Ok(false)) => {
                let msg = format!("the request head is larger than {limit} bytes");
                let res = crate::error::raw_error_response(
                    brb_api::ErrorCode::HeaderTooLarge,
                    &msg,
                    None,
                );
                if io.write_all(&res).await.is_ok() {
                    let _ = io.shutdown().await;
                }
                return;
            }
            Ok(Ok(true)) => {
                if let Some(req) = direct_request(&buf) {
                    return self.serve_direct(io, req, cert).await;
                }
            }
        }
        // Hyper, with what was read put back in front, its own bare error answers made JSON.
        let io = crate::error::JsonHeadErrors::new(Rewind {
            pre: Some(buf.freeze()),
            inner: io,
        });
        let conn = self
            .http
            .serve_connection(TokioIo::new(io), service(self.router, self.peer, cert));
        let _ = self.graceful.watch(conn).await;
    }

    /// Answers an event-stream request on this connection's socket.
    async fn serve_direct<IO>(self, mut io: IO, mut req: Request<Body>, cert: Option<ClientCert>)
    where
        IO: AsyncRead + AsyncWrite + MaybeTcp + Unpin + Send + 'static,
    {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        req.extensions_mut().insert(sse::Direct);
        if let Some(c) = cert {
            req.extensions_mut().insert(c);
        }
        let Ok(mut res) = self.router.oneshot(req).await;
        let takeover = res.extensions_mut().remove::<sse::Takeover>();
        match takeover.and_then(|t| t.take()) {
            Some(mut stream) => {
                // The head goes out in one write with the stream's first bytes (preamble,
                // replay or state): written apart, they were two segments, two wake-ups and
                // two reads in every client, 50,000 times over in a reconnect storm.
                head_first(response_head(&res, None), &mut stream.first);
                drop(res);
                // A switch stream on plain TCP: the fan-out thread writes its deliveries.
                let state = stream.state.clone();
                let fan = match stream.sub.scope() {
                    sse::Scope::One(_) => state.fanout(),
                    sse::Scope::All => None,
                };
                match (fan, io.into_tcp()) {
                    (Some(fan), Ok(tcp)) => fanout::serve(fan, stream, tcp).await,
                    (None, Ok(mut tcp)) => sse::write_direct(stream, &mut tcp).await,
                    (_, Err(mut io)) => sse::write_direct(stream, &mut io).await,
                }
            }
            None => {
                // Not a stream (an error, mostly): the whole answer, then close. A client that
                // asked for a stream reconnects anyway.
                let (parts, body) = res.into_parts();
                let body = match tokio::time::timeout(
                    DRAIN_TIMEOUT,
                    axum::body::to_bytes(body, MAX_DIRECT_BODY),
                )
                .await
                {
                    Ok(Ok(b)) => b,
                    _ => Bytes::new(),
                };
                let res = Response::from_parts(parts, ());
                let mut out = response_head(&res, Some(body.len()));
                out.extend_from_slice(&body);
                if io.write_all(&out).await.is_ok() {
                    let _ = io.shutdown().await;
                }
            }
        }
    }
}

/// Reads until `buf` holds a complete request head (true), or `limit` bytes without one
/// (false: answered 431). An error when the peer closes before any head.
async fn read_head<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    limit: usize,
) -> io::Result<bool> {
    loop {
        if buf.len() >= limit {
            return Ok(false);
        }
        if buf.capacity() == buf.len() {
            buf.reserve(HEAD_BUF.min(limit - buf.len()));
        }
        let n = io.read_buf(buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if head_complete(buf) {
            return Ok(true);
        }
    }
}

/// Whether `buf` holds the end of a head (also when it is not a valid one: hyper says why).
fn head_complete(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n")
}

/// The request, if this head is one we serve directly: an HTTP/1.1 `GET` of an event stream,
/// without a body, with nothing pipelined after it.
fn direct_request(buf: &[u8]) -> Option<Request<Body>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = parsed.parse(buf).ok()? else {
        return None;
    };
    if len != buf.len() || parsed.method? != "GET" || parsed.version? != 1 {
        return None;
    }
    let target = parsed.path?;
    if !is_event_stream_path(target.split('?').next().unwrap_or(target)) {
        return None;
    }
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(target)
        .version(Version::HTTP_11);
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        if name == header::CONTENT_LENGTH && h.value != b"0" {
            return None;
        }
        if name == header::TRANSFER_ENCODING || name == header::UPGRADE {
            return None;
        }
        req = req.header(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    req.body(Body::empty()).ok()
}

/// `/api/v1/events` and `/api/v1/switches/{name}/events`.
fn is_event_stream_path(path: &str) -> bool {
    if path == "/api/v1/events" {
        return true;
    }
    path.strip_prefix("/api/v1/switches/")
        .and_then(|rest| rest.strip_suffix("/events"))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

/// Status line and headers. `Some(len)`: a complete body of that length follows and the
/// connection closes after it; `None`: a chunked stream follows.
/// Puts `head` in front of a stream's first bytes, as one buffer (one write, one segment).
fn head_first(head: Vec<u8>, first: &mut Vec<Bytes>) {
    let mut out = head;
    for b in first.drain(..) {
        out.extend_from_slice(&b);
    }
    first.push(Bytes::from(out));
}

fn response_head<B>(res: &Response<B>, body_len: Option<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let status = res.status();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in res.headers() {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match body_len {
        Some(n) => out
            .extend_from_slice(format!("content-length: {n}\r\nconnection: close\r\n").as_bytes()),
        None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn service(
    router: axum::Router,
    peer: SocketAddr,
    cert: Option<ClientCert>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        if let Some(c) = &cert {
            req.extensions_mut().insert(c.clone());
        }
        router.clone().oneshot(req.map(axum::body::Body::new))
    })
}

/// An I/O object that first yields bytes already read from it.
struct Rewind<IO> {
    pre: Option<Bytes>,
    inner: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(pre) = self.pre.as_mut() {
            let n = pre.len().min(buf.remaining());
            buf.put_slice(&pre[..n]);
            pre.advance(n);
            if pre.is_empty() {
                self.pre = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_connection_cap_is_the_setting_or_the_file_limit_less_the_reserve() {
        assert_eq!(connection_cap(100, Some(20_000)), 100);
        assert_eq!(
            connection_cap(0, Some(20_000)),
            20_000 - FD_RESERVE as usize
        );
        // A tiny limit still lets some clients in.
        assert_eq!(connection_cap(0, Some(100)), 64);
        assert_eq!(connection_cap(0, None), usize::MAX);
    }
    use super::*;

    #[test]
    fn event_stream_paths() {
        assert!(is_event_stream_path("/api/v1/events"));
        assert!(is_event_stream_path("/api/v1/switches/workers/events"));
        assert!(!is_event_stream_path("/api/v1/switches//events"));
        assert!(!is_event_stream_path("/api/v1/switches/a/b/events"));
        assert!(!is_event_stream_path("/api/v1/switches/workers"));
        assert!(!is_event_stream_path("/api/v1/eventsx"));
    }

    #[test]
    fn only_plain_event_stream_gets_are_served_directly() {
        let ok = b"GET /api/v1/switches/workers/events?x=1 HTTP/1.1\r\nhost: a\r\nauthorization: Bearer t\r\nlast-event-id: 4\r\n\r\n";
        let req = direct_request(ok).expect("a plain stream request");
        assert_eq!(req.uri().path(), "/api/v1/switches/workers/events");
        assert_eq!(req.uri().query(), Some("x=1"));
        assert_eq!(req.headers()["last-event-id"], "4");
        for no in [
            &b"GET /api/v1/switches HTTP/1.1\r\nhost: a\r\n\r\n"[..],
            b"POST /api/v1/events HTTP/1.1\r\nhost: a\r\n\r\n",
            b"GET /api/v1/events HTTP/1.0\r\nhost: a\r\n\r\n",
            b"GET /api/v1/events HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc",
            b"GET /api/v1/events HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            // Pipelined: hyper answers both.
            b"GET /api/v1/events HTTP/1.1\r\nhost: a\r\n\r\nGET /api/v1/events HTTP/1.1\r\n\r\n",
            b"GET /api/v1/events HTTP/1.1\r\nbad header\r\n\r\n",
            b"\x00\x01\x02garbage\r\n\r\n",
        ] {
            assert!(
                direct_request(no).is_none(),
                "{}",
                String::from_utf8_lossy(no)
            );
        }
    }

    #[test]
    fn heads_are_complete_at_the_blank_line() {
        assert!(!head_complete(b"GET / HTTP/1.1\r\nhost: a\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\nhost: a\n\n"));
    }

    #[test]
    fn response_heads_frame_the_body() {
        let mut res = Response::new(());
        *res.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        let head = String::from_utf8(response_head(&res, Some(12))).unwrap();
        assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
        assert!(head.contains("content-type: application/json\r\n"));
        assert!(head.contains("content-length: 12\r\nconnection: close\r\n\r\n"));
        assert!(!head.contains("999"));
        let head = String::from_utf8(response_head(&Response::new(()), None)).unwrap();
        assert!(
            head.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{head}"
        );
    }

    /// The head and a stream's first bytes become one buffer, head first: written apart they
    /// were two segments and two reads in every reconnecting client.
    #[test]
    fn the_head_goes_out_with_the_first_bytes() {
        let mut first = vec![
            Bytes::from_static(b"preamble"),
            Bytes::from_static(b"state"),
        ];
        head_first(b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), &mut first);
        assert_eq!(
            first,
            vec![Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\npreamblestate")]
        );
    }

    #[tokio::test]
    async fn rewind_yields_the_prefix_first() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut r = Rewind {
            pre: Some(Bytes::from_static(b"hello")),
            inner: b,
        };
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello world");
    }
}

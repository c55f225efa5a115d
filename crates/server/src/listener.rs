//! Accepting connections, for the client listener (plain HTTP) and the
//! federation listener (TLS) alike: a cap on open connections, and
//! timeouts so that a peer that sends half a request, or nothing, cannot
//! hold a connection (and a file descriptor) for ever.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::Router;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{io::AsyncRead, io::AsyncWrite, sync::Semaphore, time::Sleep};
use tower::Service;

/// What one listener allows each connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once; the next are closed as soon as accepted.
    pub max_connections: usize,
    /// Time to send a request's headers, and the longest a connection may
    /// sit idle between requests.
    pub header_timeout: Duration,
    /// The longest wait for the next piece of a request body.
    pub body_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves; open
/// connections then get ten seconds to finish. With `tls`, each connection
/// is a TLS one (the handshake bounded by the header timeout).
pub async fn serve(
    name: &'static str,
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let refused_at = AtomicU64::new(0);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Said once a minute at most: a flood must not flood the log too.
            let now = crate::services::accounts::now_ms() as u64 / 60_000;
            if refused_at.swap(now, Ordering::Relaxed) != now {
                tracing::warn!(
                    listener = name,
                    max_connections = limits.max_connections,
                    "connection cap reached: new connections are closed until some end"
                );
            }
            drop(tcp);
            continue;
        };
        let router = router.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(listener = name, %peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    serve_connection(name, tls, peer, router, limits, watcher).await
                }
                None => serve_connection(name, tcp, peer, router, limits, watcher).await,
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!(listener = name, "connections still open at shutdown were closed");
    }
    Ok(())
}

async fn serve_connection<S>(
    name: &'static str,
    io: S,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let (mut parts, body) = req.into_parts();
        // The handlers read the peer's address from here.
        parts.extensions.insert(axum::extract::ConnectInfo(peer));
        let body = axum::body::Body::new(IdleTimeout::new(body, limits.body_timeout));
        router.clone().call(http::Request::from_parts(parts, body))
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.header_timeout)
        .keep_alive_timeout(limits.header_timeout);
    let io = FirstBytes::new(io, limits.header_timeout);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
    }
}

/// A connection that must start talking within the timeout. The HTTP
/// version is told from a connection's first bytes, a wait no HTTP timeout
/// covers yet: a peer saying nothing, or only the start of the HTTP/2
/// preface, is cut when the time is up.
struct FirstBytes<S> {
    inner: S,
    /// Until the first bytes tell the version.
    deadline: Option<Pin<Box<Sleep>>>,
    received: usize,
    /// A Matrix error being written in place of hyper's, and how much of
    /// it is out.
    replacement: Option<(Vec<u8>, usize)>,
    /// Set once a replacement was written: nothing is looked at after it.
    replaced: bool,
}

/// The HTTP/2 connection preface: what a peer must send before the version is known.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl<S> FirstBytes<S> {
    fn new(inner: S, timeout: Duration) -> FirstBytes<S> {
        FirstBytes {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            received: 0,
            replacement: None,
            replaced: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstBytes<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if this.deadline.is_some() {
                    let new = &buf.filled()[before..];
                    let at = this.received.min(H2_PREFACE.len());
                    let end = (at + new.len()).min(H2_PREFACE.len());
                    let still_preface = new[..end - at] == H2_PREFACE[at..end];
                    this.received += new.len();
                    if !still_preface || this.received >= H2_PREFACE.len() {
                        this.deadline = None;
                    }
                }
                Poll::Ready(r)
            }
            Poll::Pending => match this.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the peer sent no request in time",
                ))),
                _ => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> FirstBytes<S> {
    /// Writes what replaces one of hyper's own error answers; ready once
    /// all of it is out.
    fn drain_replacement(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((bytes, at)) = &mut self.replacement {
            if *at == bytes.len() {
                self.replacement = None;
                self.replaced = true;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*at..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *at += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// When `head` is hyper's answer to a request it could not parse, starts
    /// writing a Matrix error in its place and says so.
    fn replace_parse_error(&mut self, head: &[u8]) -> bool {
        if self.replaced || self.replacement.is_some() {
            return self.replacement.is_some();
        }
        let Some(answer) = matrix_parse_error(head) else {
            return false;
        };
        self.replacement = Some((answer, 0));
        true
    }
}

/// hyper answers a request it cannot parse (an over-long URI, too many or
/// too large headers, bytes that are not HTTP) itself, with an empty body
/// and no way to change it. Its answer is recognised by its exact head,
/// which nothing the router answers starts with (every routed response
/// starts with its content type or CORS headers), and a Matrix error with
/// the same status takes its place, so that every answer carries an
/// `errcode`.
fn matrix_parse_error(head: &[u8]) -> Option<Vec<u8>> {
    const ERRORS: [(&str, &str, &str); 3] = [
        ("400 Bad Request", "M_UNKNOWN", "The request is not valid HTTP"),
        ("414 URI Too Long", "M_TOO_LARGE", "The request URI is too long"),
        (
            "431 Request Header Fields Too Large",
            "M_TOO_LARGE",
            "The request headers are too large or too many",
        ),
    ];
    if !head.starts_with(b"HTTP/1.1 4") {
        return None;
    }
    ERRORS.iter().find_map(|(status, errcode, error)| {
        let prefix = format!("HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\n");
        if !head.starts_with(prefix.as_bytes()) {
            return None;
        }
        let body = serde_json::json!({ "errcode": errcode, "error": error }).to_string();
        Some(
            format!(
                "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-type: application/json\r\n\
                 access-control-allow-origin: *\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    })
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstBytes<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.replace_parse_error(buf) {
            // hyper's head is taken as written; the connection closes after it.
            return this.drain_replacement(cx).map_ok(|()| buf.len());
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.drain_replacement(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.drain_replacement(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let first = bufs.iter().find(|b| !b.is_empty()).map(|b| &b[..]).unwrap_or_default();
        if this.replace_parse_error(first) {
            let all = bufs.iter().map(|b| b.len()).sum();
            return this.drain_replacement(cx).map_ok(|()| all);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request body that fails when the next piece takes longer than the
/// timeout to come: a reader waiting for it gets an error instead of
/// waiting for ever. The clock runs only while the reader waits.
struct IdleTimeout {
    inner: Incoming,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimeout {
    fn new(inner: Incoming, timeout: Duration) -> IdleTimeout {
        IdleTimeout {
            inner,
            timeout,
            sleep: None,
        }
    }
}

/// The error a body read gets when the client stopped sending.
#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing of the request body for {0:?}")]
pub struct BodyTimedOut(Duration);

impl hyper::body::Body for IdleTimeout {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.sleep = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimedOut(timeout).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

//! The socket layer: a TCP listener that bounds open connections, and the stream every connection
//! is served over, which bounds how long a write may stall and gives hyper's own error answers
//! the API's JSON body.
//!
//! - **Connections**: each accepted socket holds a semaphore permit until it closes, and accepting
//!   waits while all permits are taken (the kernel's backlog queues the rest). Sockets get
//!   `TCP_NODELAY`, since every message here is small and latency-sensitive.
//! - **Write progress**: a write the peer's socket does not take for `write_stall` fails the
//!   connection (`TimedOut`), so a client that stops reading cannot hold a response, its buffers
//!   and its connection — REST, SSE and (upgraded) WebSocket alike, whatever the layer above does.
//! - **hyper's own errors**: a request head hyper cannot parse (a URI over 64 KiB, too many or too
//!   large headers, a malformed header or `Content-Length`) is answered by hyper itself, with an
//!   empty body, before any handler runs — there is no hook for it. Those answers are recognised
//!   on their way out and rewritten into the documented `{"error": {"code", "message"}}` form.
//!   They are told from the server's own responses by what every response of the router carries
//!   and hyper's lack: the security headers (`x-content-type-options`). hyper writes one at a
//!   message boundary, as the connection's last, and closes.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use crate::error::ApiError;

pub struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    write_stall: Duration,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, max_connections: usize, write_stall: Duration) -> LimitedListener {
        LimitedListener {
            inner,
            permits: Arc::new(Semaphore::new(max_connections.max(1))),
            write_stall,
        }
    }

    /// The next connection, once one of the permits is free.
    pub async fn accept(&mut self) -> (LimitedStream, SocketAddr) {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let stream = LimitedStream {
                        stream,
                        _permit: permit,
                        write_stall: self.write_stall,
                        stalled: None,
                        rewrite: None,
                    };
                    return (stream, addr);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accepted connection; dropping it frees its permit.
pub struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    write_stall: Duration,
    /// Armed while a write waits for the socket; reset by every byte it takes.
    stalled: Option<Pin<Box<Sleep>>>,
    /// A hyper error answer being written in its JSON form.
    rewrite: Option<Rewrite>,
}

struct Rewrite {
    bytes: Vec<u8>,
    written: usize,
    /// What hyper is told was written: its own answer, whole.
    replaces: usize,
}

impl LimitedStream {
    /// Writes `buf` (or, for a hyper error answer, its JSON form), failing once the socket has
    /// taken nothing for `write_stall`.
    fn write_guarded(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.detect_hyper_error(buf);
        let Some(mut rewrite) = self.rewrite.take() else {
            let written = self.progress(cx, |s, cx| Pin::new(&mut s.stream).poll_write(cx, buf));
            if let Poll::Ready(Ok(n)) = written {
                crate::metrics::bytes_out(n as u64);
            }
            return written;
        };
        while rewrite.written < rewrite.bytes.len() {
            let rest = &rewrite.bytes[rewrite.written..];
            let polled = self.progress(cx, |s, cx| Pin::new(&mut s.stream).poll_write(cx, rest));
            match polled {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => rewrite.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.rewrite = Some(rewrite);
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(rewrite.replaces))
    }

    /// Starts rewriting `buf` if it is hyper's own error answer (and no rewrite is under way).
    fn detect_hyper_error(&mut self, buf: &[u8]) {
        if self.rewrite.is_none() {
            if let Some(json) = rewrite_hyper_error(buf) {
                self.rewrite = Some(Rewrite {
                    bytes: json,
                    written: 0,
                    replaces: buf.len(),
                });
            }
        }
    }

    /// Runs one write, arming the stall timer when it has to wait and disarming it on progress.
    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(&mut Self, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match write(self, cx) {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let stall = self.write_stall;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                ready!(timer.as_mut().poll(cx));
                crate::metrics::refused("write_stall");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client took nothing written to it for the write-stall limit",
                )))
            }
        }
    }
}

/// hyper's own answer to a request it could not parse — `HTTP/1.1 4xx` or `5xx`, a whole head,
/// none of the router's security headers — as a JSON error response; `None` for anything else.
fn rewrite_hyper_error(buf: &[u8]) -> Option<Vec<u8>> {
    let status = buf.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    if !matches!(status[0], b'4' | b'5') {
        return None;
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if head.contains("\r\nx-content-type-options:") {
        return None;
    }
    let status = std::str::from_utf8(status).ok()?.parse::<u16>().ok()?;
    let status = axum::http::StatusCode::from_u16(status).ok()?;
    Some(json_error_response(ApiError::from_status(status)))
}

/// A whole HTTP/1.1 response carrying `error` as the API's JSON body, closing the connection.
fn json_error_response(error: ApiError) -> Vec<u8> {
    crate::metrics::refused(error.code.as_str());
    let status = error.status;
    let body = serde_json::json!({ "error": error.body() }).to_string();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\nx-content-type-options: nosniff\r\ncache-control: no-store\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error"),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

impl AsyncRead for LimitedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().write_guarded(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // A response head is always hyper's first slice; an error answer is nothing but a head.
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
        this.detect_hyper_error(first);
        if this.rewrite.is_some() {
            return this.write_guarded(cx, first);
        }
        let written = this.progress(cx, |s, cx| Pin::new(&mut s.stream).poll_write_vectored(cx, bufs));
        if let Poll::Ready(Ok(n)) = written {
            crate::metrics::bytes_out(n as u64);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.progress(cx, |s, cx| Pin::new(&mut s.stream).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The peer's address of a connection, as the handlers see it (`ConnectInfo<Peer>`): what
/// per-client limits count without auth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_error_answers_become_json_and_nothing_else_does() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let json = String::from_utf8(rewrite_hyper_error(hyper).unwrap()).unwrap();
        assert!(
            json.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{json}"
        );
        let (head, body) = json.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string());
        for status in [b"400", b"414"] {
            let head = [&b"HTTP/1.1 "[..], status, b" X\r\ncontent-length: 0\r\n\r\n"].concat();
            assert!(rewrite_hyper_error(&head).is_some());
        }
        // The router's own answers, successes, partial heads and bodies pass untouched.
        let ours = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\nx-content-type-options: nosniff\r\n\r\n{}";
        for buf in [
            &ours[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"{\"error\":\"HTTP/1.1 400 Bad Request\r\n\r\n\"}",
            b"",
        ] {
            assert!(
                rewrite_hyper_error(buf).is_none(),
                "{}",
                String::from_utf8_lossy(buf)
            );
        }
    }
}

//! One byte-stream type for every connection legate makes or accepts: TCP or unix-domain,
//! plain or TLS (legate as the TLS client towards servers, as the TLS server towards clients).

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A socket without TLS.
pub enum Plain {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// A connection as sessions, server connections and L4 pools see it.
pub enum Stream {
    Plain(Plain),
    /// legate is the TLS client (a connection to a server).
    Client(Box<tokio_rustls::client::TlsStream<Plain>>),
    /// legate is the TLS server (a client's connection to a `listen_tls` pool).
    Server(Box<tokio_rustls::server::TlsStream<Plain>>),
}

pub type BoxRead = Box<dyn AsyncRead + Unpin + Send>;
pub type BoxWrite = Box<dyn AsyncWrite + Unpin + Send>;

impl Stream {
    /// Read and write halves. Plain sockets split into owned halves with no lock between
    /// them; a TLS stream is one state machine, so its halves share it.
    pub fn into_split(self) -> (BoxRead, BoxWrite) {
        match self {
            Stream::Plain(Plain::Tcp(s)) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Stream::Plain(Plain::Unix(s)) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            other => {
                let (r, w) = tokio::io::split(other);
                (Box::new(r), Box::new(w))
            }
        }
    }
}

/// Forward an `AsyncRead`/`AsyncWrite` call to whichever variant `$self` holds.
macro_rules! each {
    ($self:expr, $s:ident => $e:expr, $($v:path),+) => {
        match $self.get_mut() {
            $($v($s) => $e,)+
        }
    };
}

impl AsyncRead for Plain {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf), Plain::Tcp, Plain::Unix)
    }
}

impl AsyncWrite for Plain {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf), Plain::Tcp, Plain::Unix)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs), Plain::Tcp, Plain::Unix)
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx), Plain::Tcp, Plain::Unix)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx), Plain::Tcp, Plain::Unix)
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf), Stream::Plain, Stream::Client, Stream::Server)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf), Stream::Plain, Stream::Client, Stream::Server)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs), Stream::Plain, Stream::Client, Stream::Server)
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Client(s) => s.is_write_vectored(),
            Stream::Server(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx), Stream::Plain, Stream::Client, Stream::Server)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx), Stream::Plain, Stream::Client, Stream::Server)
    }
}

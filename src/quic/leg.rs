//! One bidirectional QUIC stream as one byte stream.
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A QUIC stream's two halves, read and written like a TCP connection.
/// Dropping it finishes the sending half and stops the receiving one.
pub struct QuicLeg {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl QuicLeg {
    pub fn new(send: quinn::SendStream, recv: quinn::RecvStream) -> QuicLeg {
        QuicLeg { send, recv }
    }

    /// The sending half, which takes `Bytes` without copying them.
    pub fn send_mut(&mut self) -> &mut quinn::SendStream {
        &mut self.send
    }

    /// Both halves, for moving quinn's own chunks ([`super::splice`]).
    pub fn halves(&mut self) -> (&mut quinn::SendStream, &mut quinn::RecvStream) {
        (&mut self.send, &mut self.recv)
    }
}

impl AsyncRead for QuicLeg {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicLeg {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.send).poll_write(cx, buf).map_err(std::io::Error::from)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}

/// The sending half of the QUIC stream a leg is, bare or counted open (see
/// [`crate::leg::SendUnder`]).
pub fn send_of(leg: &mut dyn std::any::Any) -> Option<&mut quinn::SendStream> {
    if leg.is::<QuicLeg>() {
        return leg.downcast_mut::<QuicLeg>().map(QuicLeg::send_mut);
    }
    leg.downcast_mut::<Guarded<super::OpenStream>>().map(|g| g.leg_mut().send_mut())
}

/// A QUIC leg that holds `guard` (its place in a count of open streams, a
/// connection slot) until the leg itself is dropped, wherever it went: a data
/// leg outlives the task that took it.
pub struct Guarded<G> {
    leg: QuicLeg,
    _guard: G,
}

impl<G> Guarded<G> {
    pub fn new(leg: QuicLeg, guard: G) -> Guarded<G> {
        Guarded { leg, _guard: guard }
    }

    pub fn leg_mut(&mut self) -> &mut QuicLeg {
        &mut self.leg
    }
}

impl<G: Unpin> AsyncRead for Guarded<G> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.leg).poll_read(cx, buf)
    }
}

impl<G: Unpin> AsyncWrite for Guarded<G> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.leg).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.leg).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.leg).poll_shutdown(cx)
    }
}

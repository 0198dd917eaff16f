//! A dialler's UDP socket, as quinn's tokio socket but keeping the one error
//! quinn drops: the relay's port refused a datagram ([`Refusals`]).
//!
//! The socket is `connect()`ed to the relay, so an ICMP "port unreachable"
//! from the relay's host becomes a pending `ECONNREFUSED` on it, which the
//! next system call on the socket takes, whichever it is. quinn-udp logs
//! and drops it when a send takes it, and quinn's receive loop drops it too.
//! On loopback the ICMP comes back inside the send that caused it, and a
//! second datagram sent right after (a loss probe is two) takes the error
//! before any watcher of the socket's error readiness can run. So every
//! taker here records it: a send, a receive, and [`Refusals::take`] for an
//! error nothing else took.
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::Interest;
use tokio::sync::Notify;

/// Refusals seen on one socket, and a way to wait for the next.
#[derive(Debug, Default)]
pub struct Refusals {
    notify: Notify,
}

impl Refusals {
    fn record(&self) {
        // A permit is kept when no one waits yet, so none is lost.
        self.notify.notify_one();
    }

    /// Returns at the first refusal recorded since the last return.
    pub async fn next(&self) {
        self.notify.notified().await
    }
}

/// quinn's view of the socket ([`AsyncUdpSocket`]).
pub struct Socket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    refusals: Arc<Refusals>,
    last_logged: Mutex<Option<Instant>>,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket").field("io", &self.io).finish_non_exhaustive()
    }
}

impl Socket {
    /// Wraps a connected, non-blocking socket (inside a tokio runtime).
    pub fn new(socket: std::net::UdpSocket) -> io::Result<Arc<Self>> {
        let state = UdpSocketState::new((&socket).into())?;
        let io = tokio::net::UdpSocket::from_std(socket)?;
        Ok(Arc::new(Socket { io, state, refusals: Arc::default(), last_logged: Mutex::new(None) }))
    }

    /// Where refusals are recorded.
    pub fn refusals(&self) -> Arc<Refusals> {
        self.refusals.clone()
    }

    /// Waits for the socket's error readiness and takes a pending error
    /// that no send or receive took, recording it when it is a refusal.
    pub async fn take_unclaimed_error(&self) -> io::Result<()> {
        self.io.ready(Interest::ERROR).await?;
        match self.io.take_error() {
            Ok(Some(e)) => self.note(&e),
            // Taken by a send or a receive in between (and recorded there):
            // clear the readiness, so that the next error wakes this again.
            _ => {
                let _ = self.io.try_io(Interest::ERROR, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
            }
        }
        Ok(())
    }

    fn note(&self, e: &io::Error) {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            self.refusals.record();
            return;
        }
        // Other errors (a network unreachable, say) are the path's, and
        // quinn's timers deal with them: say so once a minute at most.
        let mut last = self.last_logged.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            tracing::warn!(error = %e, "UDP socket error (QUIC retransmits; repeats are not logged for a minute)");
        }
    }
}

impl AsyncUdpSocket for Socket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable { socket: self, fut: None })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.io.try_io(Interest::WRITABLE, || match self.state.try_send((&self.io).into(), transmit) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            // An MTU probe larger than the route allows: quinn learns from
            // the probe's loss, as quinn-udp's own send has it.
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => Ok(()),
            // A datagram is unreliable: the error is noted, not returned.
            Err(e) => {
                self.note(&e);
                Ok(())
            }
            Ok(()) => Ok(()),
        })
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            match self.io.try_io(Interest::READABLE, || self.state.recv((&self.io).into(), bufs, meta)) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => self.note(&e),
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.io.local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }
}

type WritableFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// Waits for the socket to take a send again, for one connection's driver.
struct Writable {
    socket: Arc<Socket>,
    fut: Option<WritableFuture>,
}

impl fmt::Debug for Writable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writable").finish_non_exhaustive()
    }
}

impl UdpPoller for Writable {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let socket = self.socket.clone();
        let fut = self.fut.get_or_insert_with(|| Box::pin(async move { socket.io.writable().await }));
        let result = fut.as_mut().poll(cx);
        if result.is_ready() {
            self.fut = None;
        }
        result
    }
}

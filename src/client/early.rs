//! The application's first bytes on a keyed connection, sent while the relay
//! pairs it instead of after.
//!
//! A keyed connection (a session's later ones, `stream/derived.rs`) needs no
//! handshake: its header goes right behind the join. What the application
//! writes meanwhile is sealed and sent behind the header too, so a request
//! reaches the device one round trip sooner (the agent still checks the
//! header before it connects to the service, and a connection number is
//! opened once, so nothing here can be replayed to the service).
//!
//! The bytes are kept until the relay confirms the pairing. A refusal the
//! relay gives before it reaches the device (shutting down, the device not
//! attached there, overloaded) lets the caller try the twin, which sends them
//! again. A leg lost after they left is not simply retried (the device may
//! have passed them to its service already, and the service must not see a
//! request twice): the connection resumes through the twin
//! (`ClientSession::settle`), and only a device that says it never opened
//! it, and now never will, gets them again on a new connection.
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::pipelined::JoinAnswer;

/// At most this much of the application's bytes goes before the pairing.
pub const EARLY_MAX: usize = 16 * 1024;

/// Where the application's first bytes come from (the local connection the
/// forwarder accepted), and what was taken from it so far.
pub struct Early<'a> {
    src: &'a mut (dyn AsyncRead + Unpin + Send),
    held: BytesMut,
    /// The source ended (EOF or an error): its next reads say so again.
    ended: bool,
    /// Bytes left on the current attempt's leg (the caller clears it
    /// before each attempt).
    pub(super) sent: bool,
}

type Answer = Result<Result<JoinAnswer, oneshot::error::RecvError>, tokio::time::error::Elapsed>;

impl<'a> Early<'a> {
    pub fn new(src: &'a mut (dyn AsyncRead + Unpin + Send)) -> Self {
        Early { src, held: BytesMut::new(), ended: false, sent: false }
    }

    /// Sends what an earlier attempt took, then whatever the application
    /// writes, through `tunnel` until the relay answers (or `wait` passes).
    /// An error is the tunnel's: its leg or stream is gone.
    pub(super) async fn send_while_pairing<W: AsyncWrite + Unpin>(
        &mut self,
        tunnel: &mut W,
        answer: &mut oneshot::Receiver<JoinAnswer>,
        wait: Duration,
    ) -> std::io::Result<Answer> {
        self.sent = false;
        let deadline = tokio::time::Instant::now() + wait;
        if !self.held.is_empty() {
            self.sent = true;
            tunnel.write_all(&self.held).await?;
            tunnel.flush().await?;
        }
        loop {
            let room = EARLY_MAX.saturating_sub(self.held.len());
            self.held.reserve(room.min(4096));
            let (src, held) = (&mut *self.src, &mut self.held);
            let read = async move { src.take(room as u64).read_buf(held).await };
            tokio::select! {
                // What the application already wrote goes first, even when
                // the answer is there too (it would go right after anyway).
                biased;
                n = read, if !self.ended && room > 0 => match n {
                    Ok(n) if n > 0 => {
                        self.sent = true;
                        let new = self.held.len() - n;
                        tunnel.write_all(&self.held[new..]).await?;
                        tunnel.flush().await?;
                    }
                    // The forwarder's splice reads the end (or the error) again.
                    _ => self.ended = true,
                },
                a = tokio::time::timeout_at(deadline, &mut *answer) => return Ok(a),
            }
        }
    }

    /// The pairing is confirmed: what was held is the tunnel's now.
    /// Returns how many bytes that was.
    pub(super) fn confirmed(&mut self) -> u64 {
        std::mem::take(&mut self.held).len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_go_while_pairing_and_again_on_the_next_attempt() {
        let (mut app, mut local) = tokio::io::duplex(64);
        let mut early = Early::new(&mut local);
        app.write_all(b"GET /").await.unwrap();
        // First attempt: the bytes go through, then the relay refuses.
        let (tx, mut rx) = oneshot::channel();
        let mut first = Vec::new();
        let answer = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(JoinAnswer::Refused { reason: crate::proto::Reason::NotAttached, message: String::new() });
        };
        let (sent, ()) = tokio::join!(early.send_while_pairing(&mut first, &mut rx, Duration::from_secs(5)), answer);
        assert!(matches!(sent.unwrap(), Ok(Ok(JoinAnswer::Refused { .. }))));
        assert_eq!(first, b"GET /");
        assert!(early.sent);
        // Second attempt: what was held goes first, then what came since.
        app.write_all(b" HTTP/1.1").await.unwrap();
        drop(app);
        let (tx, mut rx) = oneshot::channel();
        let mut second = Vec::new();
        let answer = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(JoinAnswer::Paired);
        };
        let (sent, ()) = tokio::join!(early.send_while_pairing(&mut second, &mut rx, Duration::from_secs(5)), answer);
        assert!(matches!(sent.unwrap(), Ok(Ok(JoinAnswer::Paired))));
        assert_eq!(second, b"GET / HTTP/1.1");
        assert!(early.ended, "the application's end was not seen");
        early.confirmed();
        assert_eq!(early.held.capacity(), 0, "confirmed bytes were kept");
    }

    #[tokio::test]
    async fn no_more_than_the_bound_goes_before_the_pairing() {
        let (mut app, mut local) = tokio::io::duplex(64 * 1024);
        app.write_all(&vec![7u8; EARLY_MAX + 1000]).await.unwrap();
        let mut early = Early::new(&mut local);
        let (_tx, mut rx) = oneshot::channel();
        let mut out = Vec::new();
        let answer = early.send_while_pairing(&mut out, &mut rx, Duration::from_millis(200)).await.unwrap();
        assert!(answer.is_err(), "the wait should have run out");
        assert_eq!(out.len(), EARLY_MAX, "more than the bound went before the pairing");
        drop(early);
        drop(app);
        let mut rest = Vec::new();
        local.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), 1000, "the rest stays for the splice");
    }
}

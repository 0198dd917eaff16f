//! A new connection's leg that the client writes on before the relay paired
//! it: the first end-to-end flight goes right behind `ClientJoin` (the relay
//! keeps bytes read past the join and splices them once the device's leg is
//! there), so the client's key generation and that flight overlap the
//! pairing instead of waiting for `Paired`.
//!
//! Reads first consume the relay's answer to the join. `Paired` is reported
//! on a oneshot and reads go on with the stream's bytes; a refusal, or a leg
//! lost before `Paired`, is reported there too and reads never complete (the
//! caller stops the stream: nothing of the application crossed), unless the
//! caller gives the leg up: then reads fail, and the stream over it resumes
//! on another leg (application bytes went before the pairing, `early.rs`).
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::leg::Leg;
use crate::proto::{Frame, Reason};
use crate::stream::prefixed::Prefixed;

/// How the relay answered a join.
#[derive(Debug)]
pub enum JoinAnswer {
    Paired,
    Refused {
        reason: Reason,
        message: String,
    },
    /// The leg broke, or the relay said something else.
    Lost(String),
}

type Reading = Pin<Box<dyn Future<Output = Option<Prefixed<ReadHalf<Leg>>>> + Send>>;

enum Read {
    Answer(Reading),
    Stream(Prefixed<ReadHalf<Leg>>),
    Failed,
}

/// The leg, with reads gated on the relay's answer to the join.
pub struct AwaitPaired {
    read: Read,
    write: WriteHalf<Leg>,
    /// Cancelled by the caller: reads that wait for the answer fail (gone
    /// once the leg is paired).
    give_up: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

/// Wraps `leg` (on which `ClientJoin` was written); `answer` gets the
/// relay's answer; cancelling `give_up` before `Paired` breaks the leg.
pub fn await_paired(leg: Leg, answer: oneshot::Sender<JoinAnswer>, give_up: CancellationToken) -> AwaitPaired {
    let (mut r, write) = tokio::io::split(leg);
    let reading = async move {
        let mut buf = BytesMut::with_capacity(4096);
        let outcome = loop {
            match Frame::decode(&mut buf) {
                Ok(Some(Frame::Paired { .. })) => break JoinAnswer::Paired,
                Ok(Some(Frame::Error { reason, message })) => break JoinAnswer::Refused { reason, message },
                Ok(Some(other)) => break JoinAnswer::Lost(format!("unexpected {}", other.kind())),
                Err(e) => break JoinAnswer::Lost(e.to_string()),
                Ok(None) => {}
            }
            match r.read_buf(&mut buf).await {
                Ok(0) => break JoinAnswer::Lost("the relay closed the leg".into()),
                Ok(_) => {}
                Err(e) => break JoinAnswer::Lost(e.to_string()),
            }
        };
        let paired = matches!(outcome, JoinAnswer::Paired);
        let _ = answer.send(outcome);
        paired.then(|| Prefixed::new(buf.freeze(), r))
    };
    AwaitPaired { read: Read::Answer(Box::pin(reading)), write, give_up: Some(Box::pin(give_up.cancelled_owned())) }
}

impl AsyncRead for AwaitPaired {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        loop {
            match &mut self.read {
                Read::Answer(f) => match f.as_mut().poll(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Some(s)) => {
                        self.read = Read::Stream(s);
                        self.give_up = None;
                    }
                    Poll::Ready(None) => self.read = Read::Failed,
                },
                Read::Stream(s) => return Pin::new(s).poll_read(cx, buf),
                // The caller was told: it stops the stream, or gives the leg up.
                Read::Failed => break,
            }
        }
        match self.give_up.as_mut().map_or(Poll::Pending, |g| g.as_mut().poll(cx)) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::other("the leg was given up before the pairing"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for AwaitPaired {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.write).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_leg_given_up_before_the_answer_fails_its_reads_and_a_paired_one_reads_on() {
        // No answer yet: reads wait, until the caller gives the leg up.
        let (near, _far) = tokio::io::duplex(1024);
        let (tx, _rx) = oneshot::channel();
        let give_up = CancellationToken::new();
        let mut leg = await_paired(Box::new(near), tx, give_up.clone());
        let mut buf = [0u8; 8];
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), leg.read(&mut buf)).await;
        assert!(waited.is_err(), "a read before the answer returned");
        give_up.cancel();
        assert!(leg.read(&mut buf).await.is_err(), "a leg given up still waits");

        // Paired: the answer is reported and reads go on with the stream's bytes.
        let (near, mut far) = tokio::io::duplex(1024);
        let (tx, rx) = oneshot::channel();
        let give_up = CancellationToken::new();
        let mut leg = await_paired(Box::new(near), tx, give_up.clone());
        let mut paired = BytesMut::new();
        Frame::Paired { session: crate::proto::SessionId([7; 16]), conn: 1 }.encode(&mut paired);
        far.write_all(&paired).await.unwrap();
        far.write_all(b"data").await.unwrap();
        leg.read_exact(&mut buf[..4]).await.unwrap();
        assert_eq!(&buf[..4], b"data");
        assert!(matches!(rx.await, Ok(JoinAnswer::Paired)));
        give_up.cancel();
        far.write_all(b"more").await.unwrap();
        leg.read_exact(&mut buf[..4]).await.unwrap();
        assert_eq!(&buf[..4], b"more", "giving up after the pairing broke the leg");
    }
}

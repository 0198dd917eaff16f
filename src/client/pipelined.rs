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

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::leg::Leg;
use crate::proto::{Frame, Reason};

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

enum Read {
    /// Reading the relay's answer to the join; `answer` is told it.
    Answer {
        buf: BytesMut,
        answer: Option<oneshot::Sender<JoinAnswer>>,
    },
    /// Paired: the bytes read past the answer, then the leg's.
    Stream(Bytes),
    Failed,
}

/// The leg, with reads gated on the relay's answer to the join.
pub struct AwaitPaired {
    leg: Leg,
    read: Read,
    /// Cancelled by the caller: reads that wait for the answer fail (gone
    /// once the leg is paired).
    give_up: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

/// Wraps `leg` (on which `ClientJoin` was written); `answer` gets the
/// relay's answer; cancelling `give_up` before `Paired` breaks the leg.
pub fn await_paired(leg: Leg, answer: oneshot::Sender<JoinAnswer>, give_up: CancellationToken) -> AwaitPaired {
    let read = Read::Answer { buf: BytesMut::new(), answer: Some(answer) };
    AwaitPaired { leg, read, give_up: Some(Box::pin(give_up.cancelled_owned())) }
}

impl AwaitPaired {
    /// The QUIC stream under the leg, if it is one (see [`crate::leg::SendUnder`]).
    pub fn send_under(&mut self) -> Option<&mut quinn::SendStream> {
        crate::quic::send_of(&mut *self.leg)
    }

    /// Reads the answer on; `Some` once there is one.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Option<JoinAnswer> {
        let Read::Answer { buf, .. } = &mut self.read else { return None };
        loop {
            match Frame::decode(buf) {
                Ok(Some(Frame::Paired { .. })) => return Some(JoinAnswer::Paired),
                Ok(Some(Frame::Error { reason, message })) => return Some(JoinAnswer::Refused { reason, message }),
                Ok(Some(other)) => return Some(JoinAnswer::Lost(format!("unexpected {}", other.kind()))),
                Err(e) => return Some(JoinAnswer::Lost(e.to_string())),
                Ok(None) => {}
            }
            buf.reserve(4096);
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.leg), cx, buf) {
                Poll::Pending => return None,
                Poll::Ready(Ok(0)) => return Some(JoinAnswer::Lost("the relay closed the leg".into())),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Some(JoinAnswer::Lost(e.to_string())),
            }
        }
    }
}

impl AsyncRead for AwaitPaired {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        if let Some(outcome) = me.poll_answer(cx) {
            let paired = matches!(outcome, JoinAnswer::Paired);
            let read = std::mem::replace(&mut me.read, Read::Failed);
            if let Read::Answer { buf, answer } = read {
                if let Some(tx) = answer {
                    let _ = tx.send(outcome);
                }
                if paired {
                    me.read = Read::Stream(buf.freeze());
                    me.give_up = None;
                }
            }
        }
        match &mut me.read {
            Read::Stream(prefix) if !prefix.is_empty() => {
                let n = prefix.len().min(out.remaining());
                out.put_slice(&prefix.split_to(n));
                return Poll::Ready(Ok(()));
            }
            Read::Stream(_) => return Pin::new(&mut me.leg).poll_read(cx, out),
            // Waiting for the answer; or failed, and the caller was told: it
            // stops the stream, or gives the leg up.
            Read::Answer { .. } | Read::Failed => {}
        }
        match me.give_up.as_mut().map_or(Poll::Pending, |g| g.as_mut().poll(cx)) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::other("the leg was given up before the pairing"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for AwaitPaired {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

//! A new connection's leg that the client writes on before the relay paired
//! it: the first end-to-end flight goes right behind `ClientJoin` (the relay
//! keeps bytes read past the join and splices them once the device's leg is
//! there), so the client's key generation and that flight overlap the
//! pairing instead of waiting for `Paired`.
//!
//! Reads first consume the relay's answer to the join. `Paired` is reported
//! on a oneshot and reads go on with the stream's bytes; a refusal, or a leg
//! lost before `Paired`, is reported there too and reads never complete (the
//! caller stops the stream: nothing of the application crossed).
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::oneshot;

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
}

/// Wraps `leg` (on which `ClientJoin` was written); `answer` gets the relay's answer.
pub fn await_paired(leg: Leg, answer: oneshot::Sender<JoinAnswer>) -> AwaitPaired {
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
    AwaitPaired { read: Read::Answer(Box::pin(reading)), write }
}

impl AsyncRead for AwaitPaired {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        loop {
            match &mut self.read {
                Read::Answer(f) => match f.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(s)) => self.read = Read::Stream(s),
                    Poll::Ready(None) => self.read = Read::Failed,
                },
                Read::Stream(s) => return Pin::new(s).poll_read(cx, buf),
                // The caller was told and stops the stream; until then, nothing.
                Read::Failed => return Poll::Pending,
            }
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

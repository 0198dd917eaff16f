//! Reading and writing frames over any byte stream, with cancel-safe reads.
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Frame, ProtoError};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameIoError {
    #[error("peer closed the connection")]
    Closed,
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Proto(#[from] ProtoError),
}

/// A stream plus its read buffer. `read_frame` is cancel-safe: a partial frame
/// stays in the buffer when the future is dropped.
pub struct FrameIo<S> {
    io: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> FrameIo<S> {
    pub fn new(io: S) -> Self {
        FrameIo { io, rbuf: BytesMut::new(), wbuf: BytesMut::new() }
    }

    pub async fn read_frame(&mut self) -> Result<Frame, FrameIoError> {
        loop {
            if let Some(f) = Frame::decode(&mut self.rbuf)? {
                return Ok(f);
            }
            // An idle channel waits with a small buffer; a frame being
            // read gets room a few KiB at a time as its bytes arrive.
            if self.rbuf.capacity() - self.rbuf.len() < 256 {
                self.rbuf.reserve(if self.rbuf.is_empty() { 512 } else { 4096 });
            }
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(if self.rbuf.is_empty() {
                    FrameIoError::Closed
                } else {
                    FrameIoError::Proto(ProtoError::Truncated)
                });
            }
        }
    }

    pub async fn write_frame(&mut self, f: &Frame) -> std::io::Result<()> {
        self.wbuf.clear();
        f.encode(&mut self.wbuf);
        self.io.write_all(&self.wbuf).await?;
        self.io.flush().await?;
        if self.wbuf.capacity() > 16 * 1024 {
            self.wbuf = BytesMut::new();
        }
        Ok(())
    }

    /// Takes the bytes already read past the last frame, leaving none.
    pub fn take_buffered(&mut self) -> Bytes {
        self.rbuf.split().freeze()
    }

    /// Gives the stream back with any bytes already read past the last frame.
    pub fn into_parts(self) -> (S, Bytes) {
        (self.io, self.rbuf.freeze())
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// Drops idle buffers; called on long-lived, mostly idle channels.
    pub fn shrink(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
    }
}

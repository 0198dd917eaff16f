//! The record layer of a connection keyed from its session's end-to-end TLS
//! ([`super::derived`]) instead of a TLS handshake of its own.
//!
//! Records as in TLS 1.3: a 2-byte length, then AES-128-GCM of the payload
//! followed by one content-type byte (data or close), with the length as
//! associated data and the nonce the direction's IV XOR its record counter.
//! A record that fails to open ends the connection (fail closed); so does an
//! end of stream before the peer's close record (a truncation).
//!
//! The receiving direction may wait for a salt: the first bytes the peer
//! sends, from which its keys are derived (the agent's random).
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most plaintext in one record.
pub const MAX_PLAINTEXT: usize = 16 * 1024;
const TAG: usize = 16;
const LEN: usize = 2;
const MAX_BODY: usize = MAX_PLAINTEXT + 1 + TAG;
const DATA: u8 = 0x17;
const CLOSE: u8 = 0x15;
/// Most plaintext one write seals (in records of [`MAX_PLAINTEXT`]): the
/// stream below takes it as one chunk.
const BATCH: usize = 4 * MAX_PLAINTEXT;
/// The receive buffer starts at this and grows to `MAX_READ` while reads
/// fill it (as `splice.rs` sizes its buffers).
const MIN_READ: usize = 4096;
const MAX_READ: usize = 4 * (LEN + MAX_BODY);
/// Bytes of the salt a receiving direction may wait for.
pub const SALT: usize = 16;

/// One direction's key, IV and record counter.
pub struct Direction {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Direction {
    pub fn new(key: &[u8; 16], iv: [u8; 12]) -> Direction {
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key).expect("a 16-byte AES-128 key"));
        Direction { key, iv, seq: 0 }
    }

    fn nonce(&mut self) -> io::Result<Nonce> {
        if self.seq == u64::MAX {
            return Err(io::Error::other("record counter exhausted"));
        }
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        Ok(Nonce::assume_unique_for_key(n))
    }
}

/// Keys for the receiving direction, once the peer's salt is known.
pub type FromSalt = Box<dyn FnOnce(&[u8; SALT]) -> Direction + Send>;

enum Rx {
    Keyed(Direction),
    Salted(Option<FromSalt>),
}

/// A stream of sealed records over `S`.
pub struct Sealed<S> {
    io: S,
    tx: Direction,
    rx: Rx,
    /// Bytes read from `io` not yet a whole record.
    raw: BytesMut,
    /// Opened plaintext not yet read by the application.
    plain: BytesMut,
    /// What the next read reserves when the receive buffer is (nearly) full.
    want: usize,
    /// `io` reached its end.
    eof: bool,
    /// The peer's close record arrived.
    peer_closed: bool,
    /// Sealed bytes not yet written to `io`.
    out: BytesMut,
    close_sealed: bool,
}

impl<S> Sealed<S> {
    /// `prefix` goes out first, unsealed (a header, a salt).
    pub fn new(io: S, tx: Direction, rx: Direction, prefix: Vec<u8>) -> Sealed<S> {
        Self::with_rx(io, tx, Rx::Keyed(rx), prefix)
    }

    /// As [`Self::new`], the receiving keys derived from the peer's salt.
    pub fn salted(io: S, tx: Direction, rx: FromSalt, prefix: Vec<u8>) -> Sealed<S> {
        Self::with_rx(io, tx, Rx::Salted(Some(rx)), prefix)
    }

    fn with_rx(io: S, tx: Direction, rx: Rx, prefix: Vec<u8>) -> Sealed<S> {
        Sealed {
            io,
            tx,
            rx,
            raw: BytesMut::new(),
            plain: BytesMut::new(),
            want: MIN_READ,
            eof: false,
            peer_closed: false,
            out: BytesMut::from(&prefix[..]),
            close_sealed: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Seals `data` (of any length; empty for a close) as records of `kind`
    /// behind what waits in `out`.
    fn seal(&mut self, kind: u8, data: &[u8]) -> io::Result<()> {
        let records = data.len().div_ceil(MAX_PLAINTEXT).max(1);
        self.out.reserve(data.len() + records * (LEN + 1 + TAG));
        let mut chunks = data.chunks(MAX_PLAINTEXT);
        for _ in 0..records {
            let chunk = chunks.next().unwrap_or(&[]);
            let at = self.out.len();
            self.out.extend_from_slice(&((chunk.len() + 1 + TAG) as u16).to_be_bytes());
            self.out.extend_from_slice(chunk);
            self.out.extend_from_slice(&[kind]);
            let nonce = self.tx.nonce()?;
            let (head, payload) = self.out[at..].split_at_mut(LEN);
            let tag = self
                .tx
                .key
                .seal_in_place_separate_tag(nonce, Aad::from(&*head), payload)
                .map_err(|_| io::Error::other("sealing a record failed"))?;
            self.out.extend_from_slice(tag.as_ref());
        }
        Ok(())
    }

    /// Opens the next whole record in `raw`, if there is one.
    fn open_next(&mut self) -> io::Result<bool> {
        if let Rx::Salted(make) = &mut self.rx {
            if self.raw.len() < SALT {
                return Ok(false);
            }
            let mut salt = [0u8; SALT];
            salt.copy_from_slice(&self.raw[..SALT]);
            self.raw.advance(SALT);
            let make = make.take().ok_or_else(|| io::Error::other("keys derived twice"))?;
            self.rx = Rx::Keyed(make(&salt));
        }
        let Rx::Keyed(rx) = &mut self.rx else { return Ok(false) };
        if self.raw.len() < LEN {
            return Ok(false);
        }
        let body = usize::from(u16::from_be_bytes([self.raw[0], self.raw[1]]));
        if !(1 + TAG..=MAX_BODY).contains(&body) {
            return Err(bad("record length out of range"));
        }
        if self.raw.len() < LEN + body {
            self.raw.reserve(LEN + body - self.raw.len());
            return Ok(false);
        }
        let mut rec = self.raw.split_to(LEN + body);
        let nonce = rx.nonce()?;
        let (head, payload) = rec.split_at_mut(LEN);
        let n = rx
            .key
            .open_in_place(nonce, Aad::from(&*head), payload)
            .map_err(|_| bad("a record failed its authentication"))?
            .len();
        rec.advance(LEN);
        rec.truncate(n);
        match rec.last() {
            Some(&DATA) => {
                rec.truncate(n - 1);
                self.plain = rec;
            }
            Some(&CLOSE) if n == 1 => self.peer_closed = true,
            _ => return Err(bad("unknown record type")),
        }
        Ok(true)
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// What a sealed stream writes its records to. The resumable stream's pipe
/// takes the buffer of sealed records as it is, as the chunk the stream
/// sends and keeps for retransmission (a copy less per byte); any other
/// writer is written to.
pub trait RecordSink: AsyncWrite + Unpin {
    /// Writes all of `out`, leaving it empty.
    fn poll_put(&mut self, cx: &mut Context<'_>, out: &mut BytesMut) -> Poll<io::Result<()>> {
        while !out.is_empty() {
            let n = ready!(Pin::new(&mut *self).poll_write(cx, out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            out.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl RecordSink for super::pipe::AppEnd {
    fn poll_put(&mut self, cx: &mut Context<'_>, out: &mut BytesMut) -> Poll<io::Result<()>> {
        super::pipe::AppEnd::poll_put(self, cx, out)
    }
}

impl RecordSink for tokio::io::DuplexStream {}

impl<S: RecordSink> Sealed<S> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.io.poll_put(cx, &mut self.out))?;
        // Hold no buffer while nothing waits to go.
        self.out = BytesMut::new();
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sealed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = &mut *self;
        let mut delivered = false;
        loop {
            if !me.plain.is_empty() {
                let n = me.plain.len().min(buf.remaining());
                buf.put_slice(&me.plain[..n]);
                me.plain.advance(n);
                delivered = true;
                if me.plain.is_empty() {
                    me.plain = BytesMut::new();
                }
                if !me.plain.is_empty() || buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
            }
            if me.peer_closed {
                return Poll::Ready(Ok(()));
            }
            // Whole records already here fill the rest of `buf`.
            if me.open_next()? {
                continue;
            }
            if delivered {
                return Poll::Ready(Ok(()));
            }
            if me.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the stream ended without the peer's close record",
                )));
            }
            if me.raw.capacity() - me.raw.len() < 1024 {
                me.raw.reserve(me.want);
            }
            let room = me.raw.capacity() - me.raw.len();
            let n = match tokio_util::io::poll_read_buf(Pin::new(&mut me.io), cx, &mut me.raw) {
                Poll::Ready(r) => r?,
                Poll::Pending => {
                    // Hold no receive buffer while nothing waits in it.
                    if me.raw.is_empty() {
                        me.raw = BytesMut::new();
                    }
                    return Poll::Pending;
                }
            };
            if n == 0 {
                me.eof = true;
            } else if n >= room && me.want < MAX_READ {
                me.want *= 2; // reads fill the buffer: bulk, grow
            } else if n < me.want / 8 && me.want > MIN_READ {
                me.want /= 2; // small reads again: shrink back
            }
        }
    }
}

impl<S: RecordSink> AsyncWrite for Sealed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let me = &mut *self;
        ready!(me.poll_drain(cx))?;
        if me.close_sealed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = buf.len().min(BATCH);
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        me.seal(DATA, &buf[..n])?;
        // Written as far as `io` takes it now; the rest goes with the next
        // write or flush.
        if let Poll::Ready(Err(e)) = me.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        if !self.close_sealed {
            self.seal(CLOSE, &[])?;
            self.close_sealed = true;
            ready!(self.poll_drain(cx))?;
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "sealed_tests.rs"]
mod tests;

//! The resumable stream's wire, inside a leg (see `stream::resumable`):
//! `u8 type` then `DATA seq:u64 len:u32 bytes`, `ACK upto:u64` (bytes
//! *delivered*; `fin+1` confirms the FIN), `FIN at:u64`,
//! `RESUME next:u64 mac:[32]`, `PING`, `PONG`, `KEYED` (the sender's
//! end-to-end TLS is complete: its resumes carry a real MAC from now on).
use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::ProtoError;

const DATA: u8 = 1;
const ACK: u8 = 2;
const FIN: u8 = 3;
const RESUME: u8 = 4;
const PING: u8 = 5;
const PONG: u8 = 6;
const KEYED: u8 = 7;
/// Largest DATA payload.
pub const MAX_DATA: usize = 32 * 1024;
/// A DATA frame's header: type, seq, len.
pub const DATA_HEADER: usize = 13;

/// One frame of the resumable stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFrame {
    /// Bytes `seq..seq+len` of this direction.
    Data {
        seq: u64,
        data: Bytes,
    },
    /// Bytes the application took, up to `upto` (`fin+1` confirms the FIN).
    Ack {
        upto: u64,
    },
    /// The sender's application closed after `at` bytes.
    Fin {
        at: u64,
    },
    /// On a new leg: resume from `next`, proven by a MAC under the resume key.
    Resume {
        next: u64,
        mac: [u8; 32],
    },
    Ping,
    Pong,
    /// The sender holds its resume key (its end-to-end TLS handshake is
    /// complete). Until a peer has said so, a resume from it with an all-zero
    /// MAC is taken (it cannot make a real one; see `stream::resumable`).
    Keyed,
}

impl StreamFrame {
    /// Appends the frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            StreamFrame::Data { seq, data } => encode_data(out, *seq, data),
            StreamFrame::Ack { upto } => {
                out.put_u8(ACK);
                out.put_u64(*upto);
            }
            StreamFrame::Fin { at } => {
                out.put_u8(FIN);
                out.put_u64(*at);
            }
            StreamFrame::Resume { next, mac } => {
                out.put_u8(RESUME);
                out.put_u64(*next);
                out.put_slice(mac);
            }
            StreamFrame::Ping => out.put_u8(PING),
            StreamFrame::Pong => out.put_u8(PONG),
            StreamFrame::Keyed => out.put_u8(KEYED),
        }
    }

    /// Takes one frame off the front of `buf`; `None` until it is whole.
    /// Checks the length of DATA before waiting for (or allocating) its body.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<StreamFrame>, ProtoError> {
        let Some(&ty) = buf.first() else { return Ok(None) };
        let need = match ty {
            DATA => {
                if buf.len() < DATA_HEADER {
                    return Ok(None);
                }
                let len = u32::from_be_bytes([buf[9], buf[10], buf[11], buf[12]]) as usize;
                if len > MAX_DATA {
                    return Err(ProtoError::Oversize { len, max: MAX_DATA });
                }
                DATA_HEADER + len
            }
            ACK | FIN => 9,
            RESUME => 41,
            PING | PONG | KEYED => 1,
            other => return Err(ProtoError::UnknownType(other)),
        };
        if buf.len() < need {
            return Ok(None);
        }
        let mut f = buf.split_to(need).freeze();
        f.advance(1);
        Ok(Some(match ty {
            DATA => {
                let seq = f.get_u64();
                f.advance(4);
                StreamFrame::Data { seq, data: f }
            }
            ACK => StreamFrame::Ack { upto: f.get_u64() },
            FIN => StreamFrame::Fin { at: f.get_u64() },
            RESUME => {
                let next = f.get_u64();
                let mut mac = [0u8; 32];
                f.copy_to_slice(&mut mac);
                StreamFrame::Resume { next, mac }
            }
            PING => StreamFrame::Ping,
            PONG => StreamFrame::Pong,
            _ => StreamFrame::Keyed,
        }))
    }
}

/// Decodes the frames of a leg as its bytes arrive, a DATA frame's body in
/// pieces: each piece is handed on as the `Data` at its own `seq` as soon as
/// it was read (the receiver takes data at any `seq` up to the next it
/// expects). So a body read half is never carried over into the next
/// receive block, a copy that cost about 5 % of a receiving agent's CPU;
/// only a header cut by a read is.
#[derive(Debug, Default)]
pub struct Decoder {
    /// In a DATA body: the seq of its next byte, and how many bytes are left.
    body: Option<(u64, usize)>,
}

impl Decoder {
    /// The next frame, or piece of a DATA frame, off the front of `buf`;
    /// `None` until there is one.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<StreamFrame>, ProtoError> {
        if self.body.is_none() && buf.first() == Some(&DATA) && buf.len() >= DATA_HEADER {
            let len = u32::from_be_bytes([buf[9], buf[10], buf[11], buf[12]]) as usize;
            if len > MAX_DATA {
                return Err(ProtoError::Oversize { len, max: MAX_DATA });
            }
            if buf.len() < DATA_HEADER + len {
                // The body is not all here: hand it on as it comes.
                buf.advance(1);
                let seq = buf.get_u64();
                buf.advance(4);
                self.body = Some((seq, len));
            }
        }
        let Some((seq, left)) = self.body else { return StreamFrame::decode(buf) };
        if buf.is_empty() {
            return Ok(None);
        }
        let n = left.min(buf.len());
        let data = buf.split_to(n).freeze();
        // A seq that would wrap stays at the top: the receiver refuses it.
        self.body = (n < left).then(|| (seq.saturating_add(n as u64), left - n));
        Ok(Some(StreamFrame::Data { seq, data }))
    }
}

/// A DATA frame from a borrowed payload (the sender's buffer, copied once into `out`).
pub fn encode_data(out: &mut BytesMut, seq: u64, data: &[u8]) {
    encode_data_header(out, seq, data.len());
    out.put_slice(data);
}

/// A DATA frame's header: its `len` bytes of payload follow.
pub fn encode_data_header(out: &mut BytesMut, seq: u64, len: usize) {
    out.put_u8(DATA);
    out.put_u64(seq);
    out.put_u32(len as u32);
}

/// Which end of a resumable stream (binds the resume MAC to a direction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Device,
}

impl Side {
    pub fn peer(self) -> Side {
        match self {
            Side::Client => Side::Device,
            Side::Device => Side::Client,
        }
    }
}

/// The MAC a `RESUME` carries: `side` resumes connection `conn` from `next`.
pub fn resume_mac(key: &[u8; 32], side: Side, conn: u32, next: u64) -> [u8; 32] {
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&k);
    ctx.update(match side {
        Side::Client => b"tether resume client",
        Side::Device => b"tether resume device",
    });
    ctx.update(&conn.to_be_bytes());
    ctx.update(&next.to_be_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Whether the `n`th frame decoded so far (1-based), `have` bytes of
    /// DATA, is whole: the next piece then starts another frame.
    fn pieces_done(frames: &[StreamFrame], n: usize, have: usize) -> bool {
        match frames.get(n - 1) {
            Some(StreamFrame::Data { data, .. }) => data.len() == have,
            _ => true,
        }
    }

    pub(crate) fn frame() -> impl Strategy<Value = StreamFrame> {
        prop_oneof![
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300))
                .prop_map(|(seq, d)| StreamFrame::Data { seq, data: d.into() }),
            any::<u64>().prop_map(|upto| StreamFrame::Ack { upto }),
            any::<u64>().prop_map(|at| StreamFrame::Fin { at }),
            (any::<u64>(), any::<[u8; 32]>()).prop_map(|(next, mac)| StreamFrame::Resume { next, mac }),
            Just(StreamFrame::Ping),
            Just(StreamFrame::Pong),
            Just(StreamFrame::Keyed),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip_whole_and_byte_by_byte(frames in proptest::collection::vec(frame(), 1..8)) {
            let mut wire = BytesMut::new();
            for f in &frames {
                f.encode(&mut wire);
            }
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for b in wire.iter() {
                buf.put_u8(*b);
                while let Some(f) = StreamFrame::decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            prop_assert_eq!(got, frames);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn the_decoder_hands_on_data_in_pieces_that_join_to_the_frames(
            frames in proptest::collection::vec(frame(), 1..8),
            cuts in proptest::collection::vec(1usize..400, 1..40),
        ) {
            let mut wire = BytesMut::new();
            for f in &frames {
                f.encode(&mut wire);
            }
            // Fed in reads of arbitrary sizes.
            let (mut buf, mut dec, mut got) = (BytesMut::new(), Decoder::default(), Vec::new());
            let mut cuts = cuts.iter().cycle();
            while !wire.is_empty() {
                let n = (*cuts.next().unwrap()).min(wire.len());
                buf.extend_from_slice(&wire.split_to(n));
                while let Some(f) = dec.next(&mut buf).unwrap() {
                    // Pieces of one DATA frame join up: each starts where the last ended.
                    let n = got.len();
                    let open = got.last().is_some_and(|g| match g {
                        StreamFrame::Data { data, .. } => !pieces_done(&frames, n, data.len()),
                        _ => false,
                    });
                    match (got.last_mut(), f) {
                        (Some(StreamFrame::Data { seq, data }), StreamFrame::Data { seq: s, data: d })
                            if open && *seq + data.len() as u64 == s && !d.is_empty() =>
                        {
                            let mut joined = BytesMut::from(&data[..]);
                            joined.extend_from_slice(&d);
                            *data = joined.freeze();
                        }
                        (_, f) => got.push(f),
                    }
                }
            }
            prop_assert_eq!(got, frames);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = StreamFrame::decode(&mut buf) {}
        }
    }

    #[test]
    fn oversize_data_is_refused_from_its_header() {
        let mut buf = BytesMut::new();
        buf.put_u8(DATA);
        buf.put_u64(0);
        buf.put_u32(MAX_DATA as u32 + 1);
        assert!(matches!(StreamFrame::decode(&mut buf), Err(ProtoError::Oversize { .. })));
        let mut unknown = BytesMut::from(&[9u8][..]);
        assert!(matches!(StreamFrame::decode(&mut unknown), Err(ProtoError::UnknownType(9))));
    }

    #[test]
    fn resume_macs_differ_by_side_conn_and_offset() {
        let k = [1; 32];
        let m = resume_mac(&k, Side::Client, 1, 10);
        assert_ne!(m, resume_mac(&k, Side::Device, 1, 10));
        assert_ne!(m, resume_mac(&k, Side::Client, 2, 10));
        assert_ne!(m, resume_mac(&k, Side::Client, 1, 11));
        assert_eq!(Side::Client.peer(), Side::Device);
    }
}

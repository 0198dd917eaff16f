//! Splicing two QUIC streams without copying their bytes: each direction
//! takes the received stream data as quinn holds it (`Bytes` cut from the
//! decrypted datagrams) and hands those same `Bytes` to the other stream's
//! send buffer. The relay's generic splice ([`crate::splice`]) copies every
//! byte twice more: out of quinn into its buffer, and back into quinn.
use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream};

use super::QuicLeg;
use crate::splice::Meter;

/// Chunks taken from quinn per call (one lock of the connection each way):
/// a chunk is one STREAM frame, at most a datagram's worth.
const BATCH: usize = 32;

/// Splices `a` and `b` until both directions have ended or either fails, as
/// [`crate::splice::splice`] does: `a_prefix` (already read from `a`) goes to
/// `b` first, and likewise `b_prefix`; an end of one direction finishes the
/// other stream's sending half and the other direction goes on.
pub async fn splice(
    a: &mut QuicLeg,
    a_prefix: Bytes,
    b: &mut QuicLeg,
    b_prefix: Bytes,
    a_to_b: Meter<'_>,
    b_to_a: Meter<'_>,
) -> std::io::Result<()> {
    let (a_send, a_recv) = a.halves();
    let (b_send, b_recv) = b.halves();
    tokio::try_join!(pump(a_recv, b_send, a_prefix, a_to_b), pump(b_recv, a_send, b_prefix, b_to_a))?;
    Ok(())
}

async fn pump(r: &mut RecvStream, w: &mut SendStream, prefix: Bytes, meter: Meter<'_>) -> std::io::Result<()> {
    if !prefix.is_empty() {
        let n = prefix.len();
        w.write_chunk(prefix).await?;
        meter.add(n);
    }
    // Empty between batches: a direction that waits holds no bytes.
    let mut bufs: [Bytes; BATCH] = std::array::from_fn(|_| Bytes::new());
    loop {
        let Some(k) = r.read_chunks(&mut bufs).await? else {
            // Half-close: the peer of `w` sees the end; the other direction goes on.
            let _ = w.finish();
            return Ok(());
        };
        let taken = &mut bufs[..k];
        if meter.tap.is_some() {
            for b in taken.iter_mut() {
                let mut m = BytesMut::from(&b[..]);
                meter.tap(&mut m);
                *b = m.freeze();
            }
        }
        let n = taken.iter().map(Bytes::len).sum();
        // Leaves every chunk empty: quinn's send buffer holds them now.
        w.write_all_chunks(taken).await?;
        meter.add(n);
    }
}

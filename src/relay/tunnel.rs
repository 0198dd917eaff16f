//! A paired connection's bytes, spliced between the client's leg and the
//! device's until it closes, the session ends or the relay drains. When both
//! legs are QUIC streams, their bytes move as quinn's own chunks, without a
//! copy ([`crate::quic::splice`]); otherwise through [`crate::splice`].
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::gate::Counted;
use super::session::Session;
use super::state::State;
use crate::leg::Leg;
use crate::metrics;
use crate::proto::Frame;
use crate::quic::QuicLeg;
use crate::splice::{Meter, splice};
use crate::stream::prefixed::Prefixed;

/// Splices `client` (with bytes already read from it) and `device` (likewise).
pub(super) async fn tunnel(
    state: &State,
    (session, conn): (Arc<Session>, u32),
    (mut client, client_prefix): (Leg, Bytes),
    (mut device, device_prefix): (Leg, Bytes),
) {
    metrics::RELAY_TUNNELS_TOTAL.inc();
    metrics::RELAY_TUNNELS_ACTIVE.inc();
    session.tunnels.fetch_add(1, Ordering::Relaxed);
    let to_device = metrics::RELAY_BYTES.with_label_values(&["to_device"]);
    let to_client = metrics::RELAY_BYTES.with_label_values(&["to_client"]);
    let up = state.to_device_meter(&session, &to_device);
    let down = to_client_meter(state, &session, &to_client);
    let mut how = "copy";
    let moved = async {
        match (quic_under(&mut client), quic_under(&mut device)) {
            (Some(c), Some(d)) => {
                how = "quic_chunks";
                metrics::RELAY_TUNNELS_QUIC_CHUNKS.inc();
                crate::quic::splice(c, client_prefix, d, device_prefix, up, down).await
            }
            _ => splice(client, client_prefix, device, device_prefix, up, down).await.map(|_| ()),
        }
    };
    let result = tokio::select! {
        r = moved => r.map_err(|e| e.to_string()),
        _ = session.end.cancelled() => Err("session ended".into()),
        // Drained: the ends resume this connection through the twin.
        _ = state.drain.cancelled() => Err("relay drained".into()),
    };
    metrics::RELAY_TUNNELS_ACTIVE.dec();
    tracing::debug!(conn, how, ?result, "tunnel closed");
}

/// How a session's bytes to the client are counted (and, in tests, tapped):
/// the splice's, and the device's first bytes that go with our `Paired`.
pub(super) fn to_client_meter<'a>(
    state: &'a State,
    session: &'a Session,
    metric: &'a prometheus::IntCounter,
) -> Meter<'a> {
    Meter::with_metric(&session.to_client, metric).tapped(state.taps.to_client.as_ref())
}

/// Writes `frame` with `bytes` behind it in one write (one packet, one TLS
/// record): bytes of the other end passed on before the splice takes over,
/// counted and tapped through `meter` as the splice's are.
pub(super) async fn write_with<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
    bytes: &[u8],
    meter: &Meter<'_>,
) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(128 + bytes.len());
    frame.encode(&mut buf);
    let at = buf.len();
    buf.extend_from_slice(bytes);
    meter.tap(&mut buf[at..]);
    w.write_all(&buf).await?;
    w.flush().await?;
    meter.add(bytes.len());
    Ok(())
}

/// The QUIC stream under a leg, as the relay builds its QUIC legs: a
/// specialist's stream ([`Counted`]), a stream the relay opened to an agent
/// ([`QuicLeg`]), or one an agent opened (behind its first frame, once that
/// has been read).
fn quic_under(leg: &mut Leg) -> Option<&mut QuicLeg> {
    let any: &mut dyn std::any::Any = &mut **leg;
    if any.is::<QuicLeg>() {
        return any.downcast_mut::<QuicLeg>();
    }
    if any.is::<Counted>() {
        return any.downcast_mut::<Counted>().map(Counted::leg_mut);
    }
    any.downcast_mut::<Prefixed<Counted>>().and_then(Prefixed::unread_inner).map(Counted::leg_mut)
}

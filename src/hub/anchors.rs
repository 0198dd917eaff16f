//! Anchoring the relays' and agents' audit chains: each report carries the
//! heads, signed by the chain's owner; the hub keeps every accepted head.
//!
//! A head is refused (counted in `tether_hub_anchor_refusals_total`, audited
//! once per source, reason and sequence) when it is unsigned, its signature
//! is not by the owner's certificate, that certificate is not a valid device
//! certificate of the fleet naming the device (agents' heads come through a
//! relay, which must not be able to forge them), or it goes back: a lower
//! sequence than the last anchor (`rollback`), or the same sequence with
//! another hash (`fork`).
//!
//! A lower head is a rollback only when the relay that delivers it has
//! delivered a higher one for that source before, or the hub has no record of
//! that relay delivering any (the record is kept in the database). A relay that has only
//! ever delivered this head or lower ones lags behind its twin (it was frozen,
//! or cut off from the agent before its heartbeat noticed) and repeats what it
//! was last told: its head is counted (`tether_hub_audit_heads_stale_total`),
//! not anchored, and not refused.
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use serde_json::json;

use super::Hub;
use crate::api::{Head, RelayReport};
use crate::tls;

/// Anchors at most this often per source (seconds): records cut off the end
/// of a log show once they are older than this.
const EVERY_SECS: i64 = 10;

/// Refusals already audited: source -> (reason, seq).
static AUDITED: LazyLock<Mutex<HashMap<String, (&'static str, u64)>>> = LazyLock::new(Default::default);

/// The highest head each relay has delivered for each source, among those
/// signed by the source (and empty chains under a certificate that verified):
/// (source, relay) -> seq. One entry per device of the fleet and relay, kept
/// in the database too (`anchor_deliveries`, written when it rises), so that
/// a restarted hub still tells a lagging relay from a rollback; read from it
/// at the first report after the start that finds the database up.
#[derive(Default)]
pub struct Delivered {
    map: Mutex<HashMap<(String, String), u64>>,
    loaded: tokio::sync::OnceCell<()>,
}

impl Delivered {
    /// Reads the record kept before this start, once.
    async fn load(&self, hub: &Hub) {
        let _ = self
            .loaded
            .get_or_try_init(|| async {
                let rows = hub.store.deliveries().await?;
                let mut map = crate::util::lock(&self.map);
                for (source, relay, seq) in rows {
                    let e = map.entry((source, relay)).or_insert(seq);
                    *e = (*e).max(seq);
                }
                Ok::<(), crate::hub::store::StoreError>(())
            })
            .await;
    }

    /// Notes that `relay` delivered `seq` for `source` (kept in the database
    /// when it rises); returns the highest it had delivered before, if any.
    async fn note(&self, hub: &Hub, source: &str, relay: &str, seq: u64) -> Option<u64> {
        self.load(hub).await;
        let before = {
            let mut map = crate::util::lock(&self.map);
            let key = (source.to_string(), relay.to_string());
            let before = map.get(&key).copied();
            map.insert(key, before.map_or(seq, |b| b.max(seq)));
            before
        };
        if before.is_none_or(|b| seq > b)
            && let Err(e) = hub.store.delivery_raise(source, relay, seq).await
            && !e.is_unavailable()
        {
            tracing::error!(source, relay, error = %e, "storing an audit head's delivery");
        }
        before
    }
}

/// Checks and keeps the heads of one report from `relay`, whose own
/// certificate (`relay_cert`, DER) signs the relay's head.
pub async fn heads(hub: &Hub, relay: &str, relay_cert: Option<&[u8]>, r: &RelayReport, now: u64) {
    if let Some(h) = &r.audit_head {
        let cert = || relay_cert.map(<[u8]>::to_vec).ok_or("no_certificate");
        anchor(hub, (&format!("relay:{relay}"), relay), h, cert, now).await;
    }
    for a in &r.agent_heads {
        let source = format!("agent:{}", a.device);
        anchor(hub, (&source, relay), &a.head, || device_cert(hub, &a.device, &a.cert), now).await;
    }
}

/// The device certificate a relay passed on, if it is a valid fleet device
/// certificate (CA, CRL, role) for `device`.
pub(super) fn device_cert(hub: &Hub, device: &str, hex_der: &str) -> Result<Vec<u8>, &'static str> {
    let der = hex::decode(hex_der).map_err(|_| "no_certificate")?;
    if der.is_empty() {
        return Err("no_certificate");
    }
    tls::renewal::check_device_cert(&hub.cfg.ca, hub.cfg.crl.as_deref(), device, &der).map_err(|e| {
        tracing::info!(device, error = %e, "a device certificate that does not verify");
        e.code
    })?;
    Ok(der)
}

/// Keeps the head of `source`, delivered by `relay`, when it is signed by
/// the certificate `cert` gives and moves forward; writes an `anchor`
/// record into the hub's own chain when it moved, at most every
/// [`EVERY_SECS`] per source. The certificate is checked only for a head
/// other than the one anchored: relays send heads again (`report_heads`),
/// and checking a device certificate against the CA and the CRL costs more
/// than the rest.
async fn anchor(
    hub: &Hub,
    (source, relay): (&str, &str),
    head: &Head,
    cert: impl FnOnce() -> Result<Vec<u8>, &'static str>,
    now: u64,
) {
    if head.seq == 0 {
        // An empty chain: nothing to anchor, but the relay has delivered it.
        if cert().is_ok() {
            hub.delivered.note(hub, source, relay, 0).await;
        }
        return;
    }
    let prev = hub.store.anchor(source).await.unwrap_or_default();
    if prev.as_ref().is_some_and(|(seq, hash, _)| *seq == head.seq && *hash == head.hash) {
        hub.delivered.note(hub, source, relay, head.seq).await;
        return fresh(source, now);
    }
    let problem = match cert().as_deref() {
        Err(why) => Some(*why),
        Ok(_) if head.sig.is_empty() => Some("unsigned"),
        Ok(c) if !crate::audit::sign::verify(c, &head.hash, &head.sig) => Some("bad_signature"),
        Ok(_) => None,
    };
    if let Some(reason) = problem {
        return refused(hub, source, head, reason, prev.map(|p| p.0)).await;
    }
    // Signed by the source: this relay has delivered it.
    let before = hub.delivered.note(hub, source, relay, head.seq).await;
    let goes_back = match &prev {
        Some((seq, _, _)) if head.seq < *seq && before.is_some_and(|b| b <= head.seq) => {
            return stale(source, relay, head.seq, *seq);
        }
        Some((seq, _, _)) if head.seq < *seq => Some("rollback"),
        Some((seq, hash, _)) if head.seq == *seq && *hash != head.hash => Some("fork"),
        _ => None,
    };
    if let Some(reason) = goes_back {
        return refused(hub, source, head, reason, prev.map(|p| p.0)).await;
    }
    let due = prev.is_none_or(|(_, _, at)| now as i64 - at >= EVERY_SECS);
    if !due {
        return;
    }
    if let Err(e) = hub.store.anchor_put(source, (head.seq, &head.hash, &head.sig), now as i64).await {
        // Without a database, the next full report carries the head again.
        if !e.is_unavailable() {
            tracing::error!(source, error = %e, "storing audit anchor");
        }
        return;
    }
    hub.audit.record("anchor", json!({"source": source, "head_seq": head.seq, "head_hash": head.hash})).await;
    fresh(source, now);
}

/// A relay's latest head is anchored as of `now` (its staleness alert).
fn fresh(source: &str, now: u64) {
    if let Some(relay) = source.strip_prefix("relay:") {
        crate::metrics::HUB_RELAY_ANCHORED.with_label_values(&[relay]).set(now as i64);
    }
}

/// A head below the anchor from a relay that never delivered a higher one:
/// it lags behind its twin.
fn stale(source: &str, relay: &str, seq: u64, anchored: u64) {
    crate::metrics::HUB_AUDIT_HEADS_STALE.with_label_values(&[relay]).inc();
    tracing::debug!(source, relay, seq, anchored, "a relay's audit head lags behind the anchor; not anchored");
}

async fn refused(hub: &Hub, source: &str, head: &Head, reason: &'static str, anchored: Option<u64>) {
    crate::metrics::HUB_ANCHOR_REFUSALS.with_label_values(&[reason]).inc();
    let fresh = crate::util::lock(&AUDITED).insert(source.to_string(), (reason, head.seq)) != Some((reason, head.seq));
    if fresh {
        tracing::warn!(source, reason, seq = head.seq, "audit head refused");
        let fields = json!({"source": source, "head_seq": head.seq, "head_hash": head.hash, "anchored_seq": anchored});
        hub.audit.record("anchor_refused", json!({"reason": reason, "detail": fields})).await;
    }
}

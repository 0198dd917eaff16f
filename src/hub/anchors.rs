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
use crate::api::{AgentHead, Head, RelayReport};
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

    /// Notes that `relay` delivered `seq` for `source`; returns the highest
    /// it had delivered before, if any, and whether the record rose (to be
    /// kept in the database: [`Store::delivery_raise_all`]).
    ///
    /// [`Store::delivery_raise_all`]: super::store::Store::delivery_raise_all
    fn note(&self, source: &str, relay: &str, seq: u64) -> (Option<u64>, bool) {
        let mut map = crate::util::lock(&self.map);
        let key = (source.to_string(), relay.to_string());
        let before = map.get(&key).copied();
        map.insert(key, before.map_or(seq, |b| b.max(seq)));
        (before, before.is_none_or(|b| seq > b))
    }
}

/// Whose certificate signs a head: the relay's own (DER), or the device
/// certificate a relay passed on with an agent's head: whole (hex DER), or
/// named by its SHA-256 when the hub keeps it ([`super::head_certs`]).
enum Owner<'a> {
    Relay(Option<&'a [u8]>),
    Device(&'a AgentHead),
}

/// A device certificate named by a SHA-256 this hub does not keep: not a
/// refusal; the relay is asked for the certificate.
const WANTED: &str = "certificate_wanted";

impl Owner<'_> {
    fn cert(&self, hub: &Hub) -> Result<Vec<u8>, &'static str> {
        match self {
            Owner::Relay(der) => der.map(<[u8]>::to_vec).ok_or("no_certificate"),
            Owner::Device(a) if a.cert.is_empty() && !a.cert_sha.is_empty() => {
                let Some(der) = hub.head_certs.get(&a.device, &a.cert_sha) else {
                    crate::metrics::HUB_HEAD_CERTS.with_label_values(&["wanted"]).inc();
                    return Err(WANTED);
                };
                crate::metrics::HUB_HEAD_CERTS.with_label_values(&["by_sha"]).inc();
                device_der(hub, &a.device, der.to_vec())
            }
            Owner::Device(a) => {
                crate::metrics::HUB_HEAD_CERTS.with_label_values(&["whole"]).inc();
                let der = device_cert(hub, &a.device, &a.cert)?;
                hub.head_certs.keep(&a.device, &der);
                Ok(der)
            }
        }
    }
}

/// What one report's heads change, written together: the database takes a
/// statement per table for the whole report, not a few per head (a fleet
/// attaching brings up to 2 000 heads in a report).
struct Changes {
    /// The anchors of the report's sources (source -> seq, hash, at): as
    /// stored, then as this report moves them.
    held: HashMap<String, (u64, String, i64)>,
    /// (source, relay) -> seq: deliveries that rose.
    raised: HashMap<(String, String), u64>,
    /// Devices whose certificate is wanted (named by a SHA-256 not kept).
    wanted: Vec<String>,
    /// (source, seq, hash, sig): heads to anchor, a source once (a second
    /// head of it in the same report is not due: [`EVERY_SECS`]).
    anchored: Vec<(String, u64, String, String)>,
}

impl Changes {
    /// The hub wants the certificate of `owner`'s device with its next head.
    fn want(&mut self, owner: &Owner<'_>) {
        if let Owner::Device(a) = owner {
            self.wanted.push(a.device.clone());
        }
    }
}

/// Checks and keeps the heads of one report from `relay`, whose own
/// certificate (`relay_cert`, DER) signs the relay's head; returns the
/// devices whose certificates the hub wants with their next heads.
pub async fn heads(hub: &Hub, relay: &str, relay_cert: Option<&[u8]>, r: &RelayReport, now: u64) -> Vec<String> {
    let mut heads: Vec<(String, &Head, Owner)> = Vec::with_capacity(r.agent_heads.len() + 1);
    if let Some(h) = &r.audit_head {
        heads.push((format!("relay:{relay}"), h, Owner::Relay(relay_cert)));
    }
    for a in &r.agent_heads {
        heads.push((format!("agent:{}", a.device), &a.head, Owner::Device(a)));
    }
    if heads.is_empty() {
        return Vec::new();
    }
    hub.delivered.load(hub).await;
    let sources: Vec<&str> = heads.iter().filter(|h| h.1.seq > 0).map(|h| h.0.as_str()).collect();
    let held = match hub.store.anchors_of(&sources).await {
        Ok(found) => found,
        // Without a database, the next full report carries the heads again.
        Err(e) => {
            if !e.is_unavailable() {
                tracing::error!(relay, error = %e, "reading audit anchors");
            }
            return Vec::new();
        }
    };
    let mut changes = Changes { held, raised: HashMap::new(), wanted: Vec::new(), anchored: Vec::new() };
    for (source, head, owner) in &heads {
        anchor(hub, (source, relay), head, owner, now, &mut changes).await;
    }
    let wanted = std::mem::take(&mut changes.wanted);
    keep(hub, changes, now).await;
    wanted
}

/// Writes what a report's heads changed: the deliveries, then the anchors
/// and their `anchor` records in the hub's own chain.
async fn keep(hub: &Hub, c: Changes, now: u64) {
    let raised: Vec<_> = c.raised.into_iter().map(|((source, relay), seq)| (source, relay, seq)).collect();
    if let Err(e) = hub.store.delivery_raise_all(&raised).await
        && !e.is_unavailable()
    {
        tracing::error!(heads = raised.len(), error = %e, "storing audit heads' deliveries");
    }
    if c.anchored.is_empty() {
        return;
    }
    if let Err(e) = hub.store.anchor_put_all(&c.anchored, now as i64).await {
        // Without a database, the next full report carries the heads again.
        if !e.is_unavailable() {
            tracing::error!(heads = c.anchored.len(), error = %e, "storing audit anchors");
        }
        return;
    }
    let records = c
        .anchored
        .iter()
        .map(|(source, seq, hash, _)| ("anchor", json!({"source": source, "head_seq": seq, "head_hash": hash})));
    hub.audit.record_all(records).await;
    for (source, ..) in &c.anchored {
        fresh(source, now);
    }
}

/// The device certificate a relay passed on, if it is a valid fleet device
/// certificate (CA, CRL, role) for `device`.
pub(super) fn device_cert(hub: &Hub, device: &str, hex_der: &str) -> Result<Vec<u8>, &'static str> {
    device_der(hub, device, hex::decode(hex_der).map_err(|_| "no_certificate")?)
}

fn device_der(hub: &Hub, device: &str, der: Vec<u8>) -> Result<Vec<u8>, &'static str> {
    if der.is_empty() {
        return Err("no_certificate");
    }
    tls::renewal::check_device_cert(&hub.cfg.ca, hub.cfg.crl.as_deref(), device, &der).map_err(|e| {
        tracing::info!(device, error = %e, "a device certificate that does not verify");
        e.code
    })?;
    Ok(der)
}

/// Checks the head of `source`, delivered by `relay`: kept (into
/// `changes`) when it is signed by the owner's certificate and moves forward,
/// at most every [`EVERY_SECS`] per source. The certificate is checked only for a
/// head other than the one anchored: relays send heads again
/// (`report_heads`), and checking a device certificate against the CA and
/// the CRL costs more than the rest.
async fn anchor(
    hub: &Hub,
    (source, relay): (&str, &str),
    head: &Head,
    owner: &Owner<'_>,
    now: u64,
    changes: &mut Changes,
) {
    let mut delivered = |seq| {
        let (before, rose) = hub.delivered.note(source, relay, seq);
        if rose {
            changes.raised.insert((source.to_string(), relay.to_string()), seq);
        }
        before
    };
    if head.seq == 0 {
        // An empty chain: nothing to anchor, but the relay has delivered it.
        match owner.cert(hub) {
            Ok(_) => _ = delivered(0),
            Err(WANTED) => changes.want(owner),
            Err(_) => {}
        }
        return;
    }
    let prev = changes.held.get(source).cloned();
    if prev.as_ref().is_some_and(|(seq, hash, _)| *seq == head.seq && *hash == head.hash) {
        delivered(head.seq);
        return fresh(source, now);
    }
    let problem = match owner.cert(hub).as_deref() {
        Err(&WANTED) => return changes.want(owner),
        Err(why) => Some(*why),
        Ok(_) if head.sig.is_empty() => Some("unsigned"),
        Ok(c) if !crate::audit::sign::verify(c, &head.hash, &head.sig) => Some("bad_signature"),
        Ok(_) => None,
    };
    if let Some(reason) = problem {
        return refused(hub, source, head, reason, prev.map(|p| p.0)).await;
    }
    // Signed by the source: this relay has delivered it.
    let before = delivered(head.seq);
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
    if due {
        changes.held.insert(source.to_string(), (head.seq, head.hash.clone(), now as i64));
        changes.anchored.push((source.to_string(), head.seq, head.hash.clone(), head.sig.clone()));
    }
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

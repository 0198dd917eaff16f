//! Device certificates at the hub: when each device's certificate expires
//! (from its relays' reports), and renewals: `/api/v1/device/D/cert` (a
//! relay forwards its device's request, and the device asks again until
//! its certificate is there), `/api/v1/cert-requests` (admins list what
//! waits for the CA's signature, and return what was signed). The hub never
//! holds the CA's key; it checks every request (signature, name, the
//! device's current key's proof) and every certificate (CA, role, name,
//! the request's key) before it keeps either.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;
use sha2::Digest;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Hub;
use super::guard::{authenticate, entitled_device, internal, read_body, relay_identity, require_admin};
use super::http::{self, Answer, ApiError, Peer, json_answer};
use super::model::User;
use super::store::DeviceCert;
use crate::api::{CertIssue, CertRenewal, CertRenewalState, CertRequestView, RelayReport, Route};
use crate::tls::renewal;
use crate::util::{lock, now_secs};

/// A certificate expiring within this is counted as expiring.
const EXPIRING_SECS: u64 = 30 * 86_400;

/// A noted change: the relay, the device, when its certificate expires.
type SeenChange = (String, String, u64);

/// The expiry last noted for each device, so that a report every 10 s
/// writes only what changed, and the queue to the one task that writes.
pub struct Seen {
    last: Mutex<HashMap<String, u64>>,
    tx: mpsc::UnboundedSender<SeenChange>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<SeenChange>>>,
}

impl Default for Seen {
    fn default() -> Seen {
        let (tx, rx) = mpsc::unbounded_channel();
        Seen { last: Mutex::default(), tx, rx: Mutex::new(Some(rx)) }
    }
}

pub async fn handle(hub: &Hub, route: Route<'_>, req: Request<Incoming>, peer: &Peer) -> Result<Answer, ApiError> {
    match route {
        Route::DeviceCert(device) => {
            let relay = relay_identity(hub, peer).await?;
            let body = read_body(hub, req, 32 * 1024, peer).await?;
            let want: CertRenewal = http::parse(&body)?;
            Ok(json_answer(StatusCode::OK, &request(hub, &relay, device, want).await?))
        }
        Route::CertRequests => {
            let user = authenticate(hub, &req, peer).await?;
            require_admin(hub, &user, peer, "cert_requests").await?;
            Ok(json_answer(StatusCode::OK, &pending(hub, &user).await?))
        }
        Route::CertIssue(device) => {
            let user = authenticate(hub, &req, peer).await?;
            require_admin(hub, &user, peer, "cert_issue").await?;
            let d = entitled_device(hub, &user, peer, device, "cert_issue").await?;
            let body = read_body(hub, req, 32 * 1024, peer).await?;
            let got: CertIssue = http::parse(&body)?;
            Ok(json_answer(StatusCode::OK, &issue(hub, &user, &d, &got.cert).await?))
        }
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such certificate route")),
    }
}

fn state_of(c: &DeviceCert) -> CertRenewalState {
    CertRenewalState {
        device: c.device.clone(),
        state: c.renewal().unwrap_or("none").to_string(),
        requested_at: c.requested_at,
        cert: c.cert.clone(),
        not_after: c.issued_not_after,
    }
}

async fn refuse(hub: &Hub, device: &str, by: &str, e: renewal::Refusal) -> ApiError {
    hub.refused("cert_renewal_refused", e.code, json!({"device": device, "by": by, "detail": e.message})).await;
    ApiError::new(StatusCode::BAD_REQUEST, e.code, e.message)
}

/// A retired device's certificate is not renewed: it ends, or the CRL ends it first.
fn retired(device: &str) -> renewal::Refusal {
    let message = format!("device {device} is retired: its certificate is not renewed");
    renewal::Refusal { code: "device_retired", message }
}

/// A device's request, forwarded by `relay`: checked, kept (a request other
/// than the one on record replaces it) and answered with where it stands.
async fn request(hub: &Hub, relay: &str, device: &str, want: CertRenewal) -> Result<CertRenewalState, ApiError> {
    let by = format!("relay:{relay}");
    match hub.store.device(device).await.map_err(internal)? {
        None => {
            let e = renewal::Refusal { code: "no_device", message: format!("no device {device} at the hub") };
            return Err(refuse(hub, device, &by, e).await);
        }
        Some(d) if d.retired.is_some() => return Err(refuse(hub, device, &by, retired(device)).await),
        Some(_) => {}
    }
    let current = match super::anchors::device_cert(hub, device, &want.cert) {
        Ok(der) => der,
        Err(code) => {
            let message = "the request does not come with this device's valid fleet certificate".to_string();
            return Err(refuse(hub, device, &by, renewal::Refusal { code, message }).await);
        }
    };
    let digest = hex::encode(sha2::Sha256::digest(want.csr.as_bytes()));
    if !crate::audit::sign::verify_as(crate::audit::sign::RENEWAL, &current, &digest, &want.proof) {
        let message = "the request is not signed by the key of the device's current certificate".to_string();
        return Err(refuse(hub, device, &by, renewal::Refusal { code: "bad_proof", message }).await);
    }
    let key = match renewal::check_request(device, &want.csr) {
        Ok(k) => k,
        Err(e) => return Err(refuse(hub, device, &by, e).await),
    };
    if renewal::cert_key(&current).as_deref() == Some(key.as_slice()) {
        let message = "the request is for the key the device holds now; a renewal takes a new key".to_string();
        return Err(refuse(hub, device, &by, renewal::Refusal { code: "same_key", message }).await);
    }
    // The same key asks again (each request is signed anew, so its text
    // differs): the request on record, and what was issued for it, stand.
    let before = hub.store.cert_of(device).await.map_err(internal)?;
    if let Some(b) = before.filter(|b| renewal::check_request(device, &b.csr).ok().as_deref() == Some(key.as_slice())) {
        return Ok(state_of(&b));
    }
    let row = hub.store.cert_request(device, &want.csr, now_secs()).await.map_err(internal)?;
    let current_not_after = renewal::not_after(&current).unwrap_or(0);
    let fields = json!({"device": device, "relay": relay, "current_not_after": current_not_after});
    hub.audit.record("cert_requested", fields).await;
    tracing::info!(device, relay, "certificate renewal requested");
    refresh_gauges(hub).await;
    Ok(state_of(&row))
}

/// Requests waiting for a signature, on the sites `user` is entitled to.
async fn pending(hub: &Hub, user: &User) -> Result<Vec<CertRequestView>, ApiError> {
    let devices = hub.store.devices_for(&user.name, false).await.map_err(internal)?;
    let certs = hub.store.certs().await.map_err(internal)?;
    let mut out: Vec<CertRequestView> = devices
        .into_iter()
        .filter_map(|d| {
            let c = certs.get(&d.id).filter(|c| c.renewal() == Some("pending"))?;
            Some(CertRequestView {
                device: d.id,
                site: d.site,
                requested_at: c.requested_at,
                csr: c.csr.clone(),
                current_not_after: c.not_after,
            })
        })
        .collect();
    out.sort_by(|a, b| (a.current_not_after, &a.device).cmp(&(b.current_not_after, &b.device)));
    Ok(out)
}

/// Keeps the certificate `user` returns for `device`'s pending request,
/// once it is a valid device certificate of the fleet for the request's key.
async fn issue(hub: &Hub, user: &User, d: &super::model::Device, cert_pem: &str) -> Result<CertRenewalState, ApiError> {
    let device = d.id.as_str();
    if d.retired.is_some() {
        return Err(refuse(hub, device, &user.name, retired(device)).await);
    }
    let Some(row) = hub.store.cert_of(device).await.map_err(internal)?.filter(|c| !c.csr.is_empty()) else {
        let e = renewal::Refusal { code: "no_request", message: format!("{device} has asked for no certificate") };
        return Err(refuse(hub, device, &user.name, e).await);
    };
    let checked = renewal::der_of(cert_pem).and_then(|der| {
        renewal::check_device_cert(&hub.cfg.ca, hub.cfg.crl.as_deref(), device, &der)?;
        let want = renewal::check_request(device, &row.csr)?;
        if renewal::cert_key(&der).as_deref() != Some(want.as_slice()) {
            let message = "the certificate is not for the key of the device's request".to_string();
            return Err(renewal::Refusal { code: "wrong_key", message });
        }
        Ok(renewal::not_after(&der).unwrap_or(0))
    });
    let not_after = match checked {
        Ok(t) => t,
        Err(e) => return Err(refuse(hub, device, &user.name, e).await),
    };
    let now = now_secs();
    let kept = hub.store.cert_issue(device, &row.csr, (cert_pem, not_after), &user.name, now).await;
    if !kept.map_err(internal)? {
        let message = format!("{device} made a new request meanwhile; sign that one");
        return Err(ApiError::new(StatusCode::CONFLICT, "request_replaced", message));
    }
    hub.audit.record("cert_issued", json!({"device": device, "by": user.name, "not_after": not_after})).await;
    tracing::info!(device, by = %user.name, "device certificate issued");
    refresh_gauges(hub).await;
    let row = hub.store.cert_of(device).await.map_err(internal)?.unwrap_or_default();
    Ok(state_of(&row))
}

/// Notes the expiry of each certificate a report shows, when it changed,
/// for [`write_seen`] (the relay's report is answered without waiting).
pub fn seen(hub: &Hub, relay: &str, r: &RelayReport) {
    let whole = r.agents.iter().flatten();
    let changed = r.agents_delta.iter().flat_map(|d| d.seen.iter());
    let mut last = lock(&hub.certs_seen.last);
    for a in whole.chain(changed).filter(|a| a.cert_expires > 0) {
        if last.insert(a.device.clone(), a.cert_expires) != Some(a.cert_expires) {
            let _ = hub.certs_seen.tx.send((relay.to_string(), a.device.clone(), a.cert_expires));
        }
    }
}

/// Writes the expiries [`seen`] noted, a batch at a time (all of a fleet at
/// once after the hub starts); a device seen with the certificate issued
/// for it has installed it.
pub async fn write_seen(hub: std::sync::Arc<Hub>, stop: CancellationToken) {
    let Some(mut rx) = lock(&hub.certs_seen.rx).take() else { return };
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        let mut batch = vec![first];
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
        }
        let issued: HashMap<String, u64> = match hub.store.certs().await {
            Ok(all) => all
                .into_values()
                .filter(|c| c.renewal() == Some("issued"))
                .map(|c| (c.device, c.issued_not_after))
                .collect(),
            Err(e) => {
                if !e.is_unavailable() {
                    tracing::error!(error = %e, "reading device certificates");
                }
                HashMap::new()
            }
        };
        for (relay, device, not_after) in batch {
            if let Err(e) = hub.store.cert_seen(&device, not_after, now_secs()).await {
                tracing::debug!(%device, error = %e, "keeping a device certificate's expiry");
                // Noted again from the next report that lists the device.
                lock(&hub.certs_seen.last).remove(&device);
                continue;
            }
            if issued.get(&device) == Some(&not_after) {
                hub.audit
                    .record("cert_installed", json!({"device": device, "relay": relay, "not_after": not_after}))
                    .await;
                tracing::info!(%device, %relay, "device presents its renewed certificate");
            }
        }
        refresh_gauges(&hub).await;
    }
}

async fn refresh_gauges(hub: &Hub) {
    match hub.store.cert_counts(now_secs() + EXPIRING_SECS).await {
        Ok((expiring, pending)) => {
            crate::metrics::HUB_DEVICE_CERTS_EXPIRING.set(expiring as i64);
            crate::metrics::HUB_CERT_RENEWALS_PENDING.set(pending as i64);
        }
        Err(e) if e.is_unavailable() => {}
        Err(e) => tracing::error!(error = %e, "counting device certificates"),
    }
}

/// Recounts every minute (a certificate comes within 30 days of its end
/// with nothing reported).
pub async fn sweep(hub: std::sync::Arc<Hub>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => refresh_gauges(&hub).await,
        }
    }
}

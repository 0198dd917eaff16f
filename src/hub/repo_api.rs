//! `/api/v1/repo`: metadata and artifacts for devices (through their relays)
//! and specialists; uploads and publishing for admins.
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Hub;
use super::guard::{authenticate, internal, require_admin};
use super::http::{self, Answer, ApiError, Peer, json_answer};
use super::repo::{BlobWriter, RepoStore, RepoStoreError, is_sha256};
use crate::api::{BlobStored, RepoListing, RepoPublished, RepoTarget, Route};
use crate::repo::meta::Envelope;
use crate::util::now_secs;

/// Largest chunk of an artifact one request returns.
pub const MAX_CHUNK: usize = 4 << 20;
/// Largest targets metadata accepted.
const MAX_TARGETS_BYTES: usize = 16 << 20;

fn store(hub: &Hub) -> Result<&RepoStore, ApiError> {
    hub.repo.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_repository", "this hub has no [repo] configured")
    })
}

/// Relays (their client certificate) and logged-in accounts may read.
async fn reader(hub: &Hub, req: &Request<Incoming>, peer: &Peer) -> Result<String, ApiError> {
    match peer.relay() {
        Some(name) if hub.board.is_relay(name) => Ok(format!("relay {name}")),
        _ => Ok(authenticate(hub, req, peer).await?.name),
    }
}

pub async fn handle(hub: &Hub, route: Route<'_>, req: Request<Incoming>, peer: &Peer) -> Result<Answer, ApiError> {
    match route {
        Route::RepoMetadata(name) => {
            reader(hub, &req, peer).await?;
            let bytes = store(hub)?.metadata(name).ok_or_else(|| {
                ApiError::new(StatusCode::NOT_FOUND, "no_metadata", format!("no repository metadata {name}"))
            })?;
            Ok(bytes_answer(bytes.into(), "application/json"))
        }
        Route::RepoList => {
            reader(hub, &req, peer).await?;
            Ok(json_answer(StatusCode::OK, &listing(store(hub)?)))
        }
        Route::BlobGet(sha) => {
            reader(hub, &req, peer).await?;
            let offset = http::query(&req, "offset").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let len = http::query(&req, "len")
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(MAX_CHUNK, |l| (l as usize).min(MAX_CHUNK));
            let Some((total, bytes)) = store(hub)?.blob_chunk(sha, offset, len).map_err(internal)? else {
                return Err(ApiError::new(StatusCode::NOT_FOUND, "no_artifact", format!("no artifact {sha}")));
            };
            let mut a = bytes_answer(bytes.into(), "application/octet-stream");
            if let Ok(v) = hyper::header::HeaderValue::from_str(&total.to_string()) {
                a.headers_mut().insert("x-total-length", v);
            }
            Ok(a)
        }
        Route::BlobPut(sha) => {
            let user = authenticate(hub, &req, peer).await?;
            require_admin(hub, &user, peer, "repo_upload").await?;
            let stored = upload(hub, store(hub)?, sha, req, peer, &user.name).await?;
            Ok(json_answer(StatusCode::CREATED, &stored))
        }
        Route::RepoPublish => {
            let user = authenticate(hub, &req, peer).await?;
            require_admin(hub, &user, peer, "repo_publish").await?;
            let repo = store(hub)?;
            let within = Duration::from_secs(hub.cfg.body_timeout_secs.max(1));
            let body = http::body(req, MAX_TARGETS_BYTES, within).await?;
            let env = match Envelope::parse("targets", &body) {
                Ok(e) => e,
                Err(e) => return Err(bad(hub, peer, &user.name, "bad_metadata", e.to_string()).await),
            };
            match repo.publish(env, now_secs()) {
                Ok(changed) => {
                    let (t, s, ts, _) = repo.versions();
                    crate::metrics::HUB_REPO_PUBLISHED.inc();
                    hub.audit
                        .record("repo_published", json!({"by": user.name, "changed": changed, "targets_version": t}))
                        .await;
                    let out = RepoPublished { changed, targets_version: t, snapshot_version: s, timestamp_version: ts };
                    Ok(json_answer(StatusCode::OK, &out))
                }
                Err(RepoStoreError::Refused(e)) => {
                    Err(bad(hub, peer, &user.name, "metadata_refused", e.to_string()).await)
                }
                Err(RepoStoreError::MissingBlob(what)) => Err(bad(
                    hub,
                    peer,
                    &user.name,
                    "missing_artifact",
                    format!("no artifact for {what}; upload it first"),
                )
                .await),
                Err(e) => Err(internal(e)),
            }
        }
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such repository route")),
    }
}

/// A refused repository request: counted, audited, and named to the peer.
async fn bad(hub: &Hub, peer: &Peer, user: &str, code: &'static str, detail: String) -> ApiError {
    hub.refused("repo_refused", code, json!({"by": user, "from": peer.addr.ip().to_string(), "detail": detail})).await;
    ApiError::new(StatusCode::BAD_REQUEST, code, detail)
}

pub(super) fn bytes_answer(body: bytes::Bytes, ctype: &'static str) -> Answer {
    let mut r = hyper::Response::new(http_body_util::Full::new(body));
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(ctype));
    r
}

pub(super) fn listing(repo: &RepoStore) -> RepoListing {
    let (targets_version, snapshot_version, timestamp_version, timestamp_expires) = repo.versions();
    let targets = repo
        .targets()
        .map(|t| {
            t.targets.into_values().map(|t| RepoTarget { info: t.custom, length: t.length, sha256: t.sha256 }).collect()
        })
        .unwrap_or_default();
    RepoListing { targets_version, snapshot_version, timestamp_version, timestamp_expires, targets }
}

/// Streams an upload to the blob store: size-capped, each piece within the
/// body timeout, kept only if its SHA-256 is the one named.
async fn upload(
    hub: &Hub,
    repo: &RepoStore,
    sha: &str,
    req: Request<Incoming>,
    peer: &Peer,
    user: &str,
) -> Result<BlobStored, ApiError> {
    if !is_sha256(sha) {
        return Err(bad(hub, peer, user, "bad_hash", format!("{sha:?} is not a lowercase hex SHA-256")).await);
    }
    let max = hub.cfg.repo.as_ref().map_or(0, |r| r.max_artifact_bytes);
    let within = Duration::from_secs(hub.cfg.body_timeout_secs.max(1));
    let mut w = BlobWriter::start(repo, sha).map_err(internal)?;
    let mut body = req.into_body();
    loop {
        let frame = match tokio::time::timeout(within, body.frame()).await {
            Err(_) => {
                w.abandon();
                return Err(bad(hub, peer, user, "body_timeout", format!("no upload data for {within:?}")).await);
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                w.abandon();
                return Err(bad(hub, peer, user, "bad_body", format!("the upload broke off: {e}")).await);
            }
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            if w.len + data.len() as u64 > max {
                w.abandon();
                return Err(bad(hub, peer, user, "artifact_too_large", format!("artifact over {max} bytes")).await);
            }
            if let Err(e) = w.write(&data) {
                w.abandon();
                return Err(internal(e));
            }
        }
    }
    let len = w.len;
    match w.finish(sha).map_err(internal)? {
        Ok(()) => {
            hub.audit.record("repo_artifact_stored", json!({"by": user, "sha256": sha, "length": len})).await;
            Ok(BlobStored { sha256: sha.into(), length: len })
        }
        Err(got) => {
            Err(bad(hub, peer, user, "hash_mismatch", format!("the upload's SHA-256 is {got}, not {sha}")).await)
        }
    }
}

/// Signs a fresh timestamp before the current one runs out.
pub async fn refresh_timestamps(hub: Arc<Hub>, stop: CancellationToken) {
    let Some(repo) = hub.repo.as_ref() else { return };
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match repo.refresh_timestamp(now_secs()) {
            Ok(true) => {
                let (_, _, ts, expires) = repo.versions();
                hub.audit.record("repo_timestamp_signed", json!({"version": ts, "expires": expires})).await;
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot sign a fresh repository timestamp"),
        }
    }
}

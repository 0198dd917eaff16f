//! The on-site operator's Unix socket: `pending`, `approve`, `deny`, `end`,
//! `sessions`, `metrics`. Mode 0600, and peers must run as the agent's user
//! (or root). One JSON request per line, one JSON answer per line.
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{AgentError, Shared};
use crate::proto::{Reason, SessionId};

/// What the on-site operator asks the agent; the same type is the
/// `tether agent` subcommand and the socket's JSON request.
#[derive(Debug, Serialize, Deserialize, clap::Subcommand)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// List access requests and jobs waiting for consent (--watch: answer each at a prompt).
    Pending,
    /// List live sessions at this device.
    Sessions,
    /// Approve a waiting request (a session id, or a job id).
    Approve { session: String },
    /// Deny a waiting request (a session id, or a job id).
    Deny { session: String },
    /// End a live session now.
    End { session: String },
    /// Print the agent's metrics.
    Metrics,
    /// Fetch and verify a package from the repository through the relays
    /// (NAME@VERSION); prints where the verified file is.
    Fetch { target: String },
}

pub fn bind(path: &Path) -> Result<UnixListener, AgentError> {
    let err = |source| AgentError::Socket { path: path.into(), source };
    if path.exists() {
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

fn own_uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)
}

pub async fn serve(listener: UnixListener, state: Shared) {
    let me = own_uid();
    loop {
        let stream = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
        };
        let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
        if uid != me && uid != 0 {
            state.refused("operator_refused", Reason::Unknown, json!({"uid": uid}));
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let _ = conversation(stream, uid, state).await;
        });
    }
}

async fn conversation(stream: UnixStream, uid: u32, state: Shared) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r.take(64 * 1024)).lines();
    while let Some(line) = lines.next_line().await? {
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Fetch { target }) => fetch(&state, &target).await,
            Ok(req) => handle(&state, uid, req),
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        };
        let mut out = serde_json::to_vec(&answer).unwrap_or_default();
        out.push(b'\n');
        w.write_all(&out).await?;
    }
    Ok(())
}

fn handle(state: &Shared, uid: u32, req: Request) -> Value {
    let parse = |s: &str| {
        SessionId::parse(s).ok_or_else(|| json!({"ok": false, "error": format!("{s:?} is not a session id")}))
    };
    match req {
        Request::Pending => {
            let list: Vec<_> = state
                .pending
                .iter()
                .map(|p| {
                    json!({
                        "session": p.key().to_string(), "service": p.service, "specialist": p.grant.specialist,
                        "role": p.grant.role, "relay": p.relay, "waiting_secs": p.since.elapsed().as_secs(),
                        "reason": p.grant.reason,
                    })
                })
                .collect();
            let jobs: Vec<_> = state
                .pending_jobs
                .iter()
                .map(|j| {
                    json!({"job": j.key(), "kind": j.kind, "target": j.target, "by": j.created_by,
                           "waiting_secs": j.since.elapsed().as_secs()})
                })
                .collect();
            json!({"ok": true, "pending": list, "jobs": jobs})
        }
        Request::Sessions => {
            let list: Vec<_> = state.sessions.iter().map(|s| json!({
                "session": s.id.to_string(), "service": s.service, "specialist": s.specialist, "relay": s.relay,
                "secs": s.started.elapsed().as_secs(), "tunnels": s.tunnels.load(std::sync::atomic::Ordering::Relaxed),
            })).collect();
            json!({"ok": true, "sessions": list})
        }
        Request::Approve { session } => answer_consent(state, uid, &session, true),
        Request::Deny { session } => answer_consent(state, uid, &session, false),
        Request::End { session } => match parse(&session) {
            Err(e) => e,
            Ok(id) if state.end_session(id, Reason::EndedOnSite, true) => json!({"ok": true}),
            Ok(_) => json!({"ok": false, "error": "no live session with that id"}),
        },
        Request::Metrics => json!({"ok": true, "text": crate::metrics::render()}),
        Request::Fetch { .. } => unreachable!("answered by fetch()"),
    }
}

async fn fetch(state: &Shared, target: &str) -> Value {
    let name = target.replacen('@', "/", 1);
    let _one = state.fetching.lock().await;
    match super::fetch::Fetcher::new(state.clone()).download(&name).await {
        Ok(d) => json!({"ok": true, "fetched": d}),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    }
}

fn answer_consent(state: &Shared, uid: u32, session: &str, allow: bool) -> Value {
    if let Some((job, p)) = state.pending_jobs.remove(session) {
        let by = format!("uid {uid}");
        let event = if allow { "job_consent_given" } else { "job_consent_denied" };
        state.audit.record(event, json!({"device": state.cfg.device, "job": job, "by": by}));
        let _ = p.answer.send((allow, by));
        return json!({"ok": true});
    }
    let Some(id) = SessionId::parse(session) else {
        return json!({"ok": false, "error": format!("{session:?} is not a session id")});
    };
    let Some((_, p)) = state.pending.remove(&id) else {
        return json!({"ok": false, "error": "no pending request with that session id"});
    };
    let by = format!("uid {uid}");
    let event = if allow { "consent_given" } else { "consent_denied" };
    state.audit.record(event, json!({"device": state.cfg.device, "session": id.to_string(), "by": by}));
    let _ = p.answer.send((allow, by));
    json!({"ok": true})
}

/// Sends one request to a running agent's socket and returns its answer.
pub async fn request(socket: &Path, req: &Request) -> std::io::Result<Value> {
    let stream = UnixStream::connect(socket).await?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    let mut lines = BufReader::new(r).lines();
    let answer = lines.next_line().await?.ok_or_else(|| std::io::Error::other("agent closed the socket"))?;
    Ok(serde_json::from_str(&answer)?)
}

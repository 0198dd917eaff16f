//! The same scenarios against both engines: SQLite in a temp file, and the
//! PostgreSQL named by `TETHER_TEST_POSTGRES` (CI starts one; each test gets
//! its own schema).
use super::*;
use crate::hub::model::{Device, Role, SessionRecord};
use std::path::Path;

async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open("sqlite:hub.db", dir.path()).await.unwrap();
    (store, dir)
}

/// A fresh schema in the test PostgreSQL, or `None` (with a note) when none is configured.
async fn postgres() -> Option<Store> {
    let Ok(url) = std::env::var("TETHER_TEST_POSTGRES") else {
        assert!(std::env::var_os("CI").is_none(), "CI must set TETHER_TEST_POSTGRES (.ci/run starts PostgreSQL)");
        eprintln!("TETHER_TEST_POSTGRES not set: PostgreSQL half skipped (CI runs it)");
        return None;
    };
    let schema = format!("t_{}", hex::encode(crate::random_bytes::<6>()));
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    c.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    Some(Store::open(&format!("{url}{sep}options=-csearch_path%3D{schema}"), Path::new(".")).await.unwrap())
}

pub(super) async fn both(f: impl AsyncFn(Store)) {
    let (s, _dir) = sqlite().await;
    assert_eq!(s.engine(), "sqlite");
    f(s).await;
    if let Some(p) = postgres().await {
        assert_eq!(p.engine(), "postgres");
        f(p).await;
    }
}

pub(super) fn user(name: &str, role: Role) -> User {
    User { name: name.into(), role, password_hash: "h".into(), totp_secret: "S".into(), disabled: false, created_at: 1 }
}

#[tokio::test]
async fn accounts_entitlements_and_verbatim_names() {
    both(async |s: Store| {
        // Quotes, semicolons and shell syntax are data, stored and read back as is.
        let nasty = "bob'); DROP TABLE users;-- $(rm -rf /)";
        s.user_add(&user(nasty, Role::Viewer)).await.unwrap();
        s.user_add(&user("alice", Role::Engineer)).await.unwrap();
        assert!(matches!(s.user_add(&user("alice", Role::Admin)).await, Err(StoreError::Exists { .. })));
        assert_eq!(s.user(nasty).await.unwrap().unwrap().role, Role::Viewer);
        assert_eq!(s.users().await.unwrap().len(), 2);
        s.device_add(&Device::new("INJ-0042", "st-marys", "required"), 5).await.unwrap();
        s.device_add(&Device::new("d'2", "other; site", "auto"), 5).await.unwrap();
        s.entitle("alice", "st-marys").await.unwrap();
        s.entitle("alice", "st-marys").await.unwrap();
        let mine = s.devices_for("alice", false).await.unwrap();
        assert_eq!(mine.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["INJ-0042"]);
        assert_eq!(s.devices_for("alice", true).await.unwrap().len(), 2);
        assert!(s.entitled("alice", "st-marys").await.unwrap());
        assert!(!s.entitled("alice", "other; site").await.unwrap());
        assert_eq!(s.device("d'2").await.unwrap().unwrap().site, "other; site");
        s.site_put(&Site {
            name: "st-marys".into(),
            allow_from: Site::parse_allow_from("10.0.0.0/8, 192.0.2.7").unwrap(),
            require_ticket: true,
        })
        .await
        .unwrap();
        let site = s.site("st-marys").await.unwrap().unwrap();
        assert!(site.require_ticket);
        assert_eq!(site.allow_from_text(), "10.0.0.0/8,192.0.2.7/32");
        s.user_set_disabled("alice", true).await.unwrap();
        assert!(s.user("alice").await.unwrap().unwrap().disabled);
        assert!(matches!(s.user_set_disabled("nobody", true).await, Err(StoreError::NotFound { .. })));
    })
    .await;
}

#[tokio::test]
async fn totp_steps_failures_and_tokens() {
    both(async |s: Store| {
        s.user_add(&user("alice", Role::Engineer)).await.unwrap();
        assert!(s.totp_use("alice", 100).await.unwrap());
        assert!(!s.totp_use("alice", 100).await.unwrap(), "a code is good once");
        assert!(!s.totp_use("alice", 99).await.unwrap(), "an older code is dead");
        assert!(s.totp_use("alice", 101).await.unwrap());
        assert_eq!(s.login_failures("ghost").await.unwrap(), (0, 0));
        // Parallel failures each count (one statement each, no read-modify-write).
        let adds: Vec<_> = (0..8).map(|_| s.login_failure_add("ghost")).collect();
        let mut counts: Vec<i64> = futures_join(adds).await.into_iter().map(Result::unwrap).collect();
        counts.sort();
        assert_eq!(counts, (1..=8).collect::<Vec<_>>());
        s.login_lock("ghost", 88).await.unwrap();
        s.login_lock("ghost", 77).await.unwrap();
        assert_eq!(s.login_failures("ghost").await.unwrap(), (8, 88), "a lock is never shortened");
        s.clear_login_failures("ghost").await.unwrap();
        assert_eq!(s.login_failures("ghost").await.unwrap(), (0, 0));
        s.token_add("hash1", "alice", 1_000_000).await.unwrap();
        assert_eq!(s.token("hash1").await.unwrap(), Some(("alice".into(), 1_000_000)));
        assert_eq!(s.token("nope").await.unwrap(), None);
        assert_eq!(s.tokens_revoke("alice").await.unwrap(), 1);
        assert_eq!(s.token("hash1").await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn sessions_and_audit_chain() {
    both(async |s: Store| {
        let rec = SessionRecord {
            id: "s1".into(),
            specialist: "alice".into(),
            device: "INJ-0042".into(),
            service: "ssh".into(),
            reason: "ticket CHG-1881".into(),
            ticket: Some("CHG-1881".into()),
            source: "127.0.0.1".into(),
            relay: "relay-a".into(),
            created_at: 10,
            expires_at: 130,
            consent_required: true,
            state: "granted".into(),
            ..SessionRecord::default()
        };
        s.session_add(&rec).await.unwrap();
        s.session_add(&SessionRecord { id: "s2".into(), specialist: "bob".into(), created_at: 11, ..rec.clone() })
            .await
            .unwrap();
        s.session_live("s1", "relay-a", "quic", Live::Started).await.unwrap();
        let live = s.session("s1").await.unwrap().unwrap();
        assert_eq!((live.state.as_str(), live.relay.as_str(), live.transport.as_str()), ("live", "relay-a", "quic"));
        // Its control leg moved to the twin, over TCP: the record follows.
        s.session_live("s1", "relay-b", "tcp", Live::Moved).await.unwrap();
        let moved = s.session("s1").await.unwrap().unwrap();
        assert_eq!((moved.state.as_str(), moved.relay.as_str(), moved.transport.as_str()), ("live", "relay-b", "tcp"));
        // relay-a's start, reported again late (it froze, then thawed), does not take it back.
        s.session_live("s1", "relay-a", "quic", Live::Started).await.unwrap();
        let late = s.session("s1").await.unwrap().unwrap();
        assert_eq!(
            (late.relay.as_str(), late.transport.as_str()),
            ("relay-b", "tcp"),
            "a late start took the record back"
        );
        // A move reported before the start it follows: the start, coming after, changes nothing.
        s.session_live("s2", "relay-b", "tcp", Live::Moved).await.unwrap();
        s.session_live("s2", "relay-a", "quic", Live::Started).await.unwrap();
        let s2 = s.session("s2").await.unwrap().unwrap();
        assert_eq!((s2.state.as_str(), s2.relay.as_str()), ("live", "relay-b"));
        // Both twins may report bytes for their legs: they add up.
        let end = SessionEnd {
            reason: "client_closed".into(),
            ended_at: 50,
            bytes_to_device: 10,
            bytes_to_client: 20,
            duration_ms: 400,
        };
        s.session_end("s1", &end).await.unwrap();
        s.session_end("s1", &SessionEnd { reason: "later".into(), ended_at: 60, duration_ms: 300, ..end.clone() })
            .await
            .unwrap();
        let got = s.session("s1").await.unwrap().unwrap();
        assert_eq!(
            (got.state.as_str(), got.end_reason.as_deref(), got.ended_at),
            ("ended", Some("client_closed"), Some(50))
        );
        assert_eq!((got.bytes_to_device, got.bytes_to_client, got.duration_ms), (20, 40, 400));
        assert!(!s.session_revoke("s1", ("admin", "revoked"), 70).await.unwrap(), "an ended session cannot be revoked");
        assert!(s.session_revoke("s2", ("admin", "revoked"), 70).await.unwrap());
        assert_eq!(s.session("s2").await.unwrap().unwrap().ended_by.as_deref(), Some("admin"));
        assert_eq!(s.sessions(Some("alice"), 10).await.unwrap().len(), 1);
        let all = s.sessions(None, 10).await.unwrap();
        assert_eq!(all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["s2", "s1"]);
        // A device's page: its sessions, or one specialist's of them.
        s.session_add(&SessionRecord { id: "s3".into(), device: "OTHER-1".into(), created_at: 12, ..rec.clone() })
            .await
            .unwrap();
        let ids = |v: Vec<SessionRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(s.device_sessions("INJ-0042", None, 10).await.unwrap()), ["s2", "s1"]);
        assert_eq!(ids(s.device_sessions("INJ-0042", Some("alice"), 10).await.unwrap()), ["s1"]);
        assert_eq!(ids(s.device_sessions("INJ-0042", None, 1).await.unwrap()), ["s2"]);
        assert_eq!(ids(s.device_sessions("OTHER-1", Some("bob"), 10).await.unwrap()), Vec::<String>::new());

        // The hub's audit chain in the database verifies like a file.
        let audit = crate::hub::audit::HubAudit::open(s.clone(), None).await.unwrap();
        audit.record("a", serde_json::json!({"user": "x'; --"})).await;
        audit.record("b", serde_json::json!({"seq": 999, "hash": "forged"})).await;
        let reopened = crate::hub::audit::HubAudit::open(s.clone(), None).await.unwrap();
        assert_eq!(reopened.head().await.0, 2);
        reopened.record("c", serde_json::json!({})).await;
        let lines = s.audit_since(0, 100).await.unwrap().join("\n");
        assert_eq!(crate::audit::verify_lines(lines.as_bytes(), crate::audit::GENESIS, 0), Ok(3));
        // Records a stopped hub left on disk: chained first at the next
        // start, except one the database has (a kill before the rewrite).
        let c: serde_json::Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("waiting.jsonl");
        let ts = c["ts"].as_str().unwrap();
        let unix = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).unwrap();
        let left = [(ts, "c"), ("2026-12-03T10:00:00.5Z", "d")].map(|(ts, event)| {
            serde_json::json!({"ts": ts, "unix": unix.unix_timestamp(), "event": event, "fields": {"n": 1}}).to_string()
        });
        std::fs::write(&spool, left.join("\n")).unwrap();
        let started = crate::hub::audit::HubAudit::open(s.clone(), Some(spool.clone())).await.unwrap();
        assert_eq!(started.kept(), 1, "the record the database has is not chained twice");
        started.flush().await;
        started.keep().await;
        assert!(!spool.exists(), "the file stays after its records were chained");
        let lines = s.audit_since(0, 100).await.unwrap();
        assert_eq!(crate::audit::verify_lines(lines.join("\n").as_bytes(), crate::audit::GENESIS, 0), Ok(4));
        assert!(lines[3].contains("\"event\":\"d\""), "{}", lines[3]);
        s.anchor_put_all(&[("relay:relay-a".into(), 5, "h5".into(), "s5".into())], 1).await.unwrap();
        s.anchor_put_all(&[("relay:relay-a".into(), 6, "h6".into(), "s6".into())], 2).await.unwrap();
        assert_eq!(s.anchor("relay:relay-a").await.unwrap(), Some((6, "h6".into(), 2)));
        let history = s.anchor_history("relay:relay-a").await.unwrap();
        assert_eq!(history.iter().map(|h| h.0).collect::<Vec<_>>(), vec![5, 6]);
        // What each relay delivered only rises.
        for (relay, seq) in [("relay-a", 7), ("relay-b", 4), ("relay-a", 5), ("relay-b", 6)] {
            s.delivery_raise_all(&[("agent:d1".into(), relay.into(), seq)]).await.unwrap();
        }
        let mut kept = s.deliveries().await.unwrap();
        kept.sort();
        assert_eq!(kept, vec![("agent:d1".into(), "relay-a".into(), 7), ("agent:d1".into(), "relay-b".into(), 6)]);
    })
    .await;
}

/// A live session no relay holds is recorded lost (with its counts), comes
/// back when a relay lists it again (its counts out again), and a relay's
/// own end replaces the lost one.
#[tokio::test]
async fn a_lost_session_can_be_found_and_a_relays_end_replaces_lost() {
    both(async |s: Store| {
        let rec = SessionRecord {
            id: "s1".into(),
            created_at: 10,
            expires_at: 500,
            state: "granted".into(),
            ..SessionRecord::default()
        };
        s.session_add(&rec).await.unwrap();
        s.session_add(&SessionRecord { id: "s2".into(), ..rec.clone() }).await.unwrap();
        assert!(!s.session_lost("s1", 20, (1, 1)).await.unwrap(), "a granted session is not live: it cannot be lost");
        s.session_live("s1", "relay-a", "tcp", Live::Started).await.unwrap();
        s.session_live("s2", "relay-a", "tcp", Live::Started).await.unwrap();
        let live: Vec<String> = s.sessions_live().await.unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(live.len(), 2, "{live:?}");
        s.session_add_bytes("s1", 100, 200).await.unwrap();

        assert!(s.session_lost("s1", 30, (5, 6)).await.unwrap());
        assert!(!s.session_lost("s1", 31, (5, 6)).await.unwrap(), "lost twice");
        let got = s.session("s1").await.unwrap().unwrap();
        assert_eq!((got.state.as_str(), got.end_reason.as_deref(), got.ended_at), ("ended", Some("lost"), Some(30)));
        assert_eq!((got.bytes_to_device, got.bytes_to_client), (105, 206));
        assert_eq!(s.sessions_live().await.unwrap().len(), 1);

        // A relay lists it again: live, and its live counts take over.
        assert!(s.session_found("s1", (5, 6)).await.unwrap());
        assert!(!s.session_found("s1", (5, 6)).await.unwrap(), "found twice");
        let got = s.session("s1").await.unwrap().unwrap();
        assert_eq!((got.state.as_str(), got.end_reason, got.ended_at), ("live", None, None));
        assert_eq!((got.bytes_to_device, got.bytes_to_client), (100, 200));

        // Lost again; then its client resumes it at the twin (a late move).
        assert!(s.session_lost("s1", 40, (0, 0)).await.unwrap());
        s.session_live("s1", "relay-b", "quic", Live::Moved).await.unwrap();
        let got = s.session("s1").await.unwrap().unwrap();
        assert_eq!((got.state.as_str(), got.relay.as_str(), got.ended_at), ("live", "relay-b", None));

        // A relay's own end replaces "lost"; any other end stays first.
        assert!(s.session_lost("s2", 50, (0, 0)).await.unwrap());
        let end = SessionEnd { reason: "client_closed".into(), ended_at: 45, ..SessionEnd::default() };
        s.session_end("s2", &end).await.unwrap();
        s.session_end("s2", &SessionEnd { reason: "later".into(), ended_at: 60, ..end }).await.unwrap();
        let got = s.session("s2").await.unwrap().unwrap();
        assert_eq!((got.end_reason.as_deref(), got.ended_at), (Some("client_closed"), Some(45)));
        // Revoked is not live: never lost.
        assert!(s.session_revoke("s1", ("admin", "revoked"), 70).await.unwrap());
        assert!(!s.session_lost("s1", 80, (0, 0)).await.unwrap());
    })
    .await;
}

/// Runs the futures concurrently; their results in order.
async fn futures_join<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().map(|o| o.expect("every future finished")).collect()
}

/// The hub and an admin command opening a fresh database at the same moment
/// both migrate it without tripping over each other (an e2e test found the
/// loser failing with "table users already exists").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processes_migrating_one_fresh_database_at_once_all_succeed() {
    for _ in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let opens = (0..4).map(|_| {
            let base = dir.path().to_path_buf();
            tokio::spawn(async move { Store::open("sqlite:hub.db", &base).await.map(|_| ()) })
        });
        for r in futures_join(opens.collect()).await {
            r.unwrap().unwrap();
        }
    }
    let Ok(url) = std::env::var("TETHER_TEST_POSTGRES") else { return };
    for _ in 0..5 {
        let schema = format!("t_{}", hex::encode(crate::random_bytes::<6>()));
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        let full = format!("{url}{sep}options=-csearch_path%3D{schema}");
        let opens = (0..4).map(|_| {
            let u = full.clone();
            tokio::spawn(async move { Store::open(&u, Path::new(".")).await.map(|_| ()) })
        });
        for r in futures_join(opens.collect()).await {
            r.unwrap().unwrap();
        }
    }
}

#[tokio::test]
async fn jobs_move_forward_by_compare_and_set_and_keep_their_output() {
    use crate::api::{JobKind, JobState, JobView};
    both(async |s: Store| {
        s.device_add(&Device::new("INJ-1", "st-marys", "auto"), 5).await.unwrap();
        let job = |id: &str, deadline: i64| JobView {
            id: id.into(),
            device: "INJ-1".into(),
            kind: JobKind::Run,
            target: "disk".into(),
            state: JobState::Queued,
            reason: String::new(),
            consent_required: false,
            created_by: "boss".into(),
            created_at: 10,
            updated_at: 10,
            deadline,
            output: String::new(),
            rollout: String::new(),
        };
        s.job_add(&job("j1", 1000)).await.unwrap();
        s.job_add(&job("j2", 20)).await.unwrap();
        assert!(matches!(s.job_add(&job("j1", 5)).await, Err(StoreError::Exists { .. })));
        let moves = (JobState::Queued, JobState::InProgress);
        assert!(s.job_move("j1", moves, "", "", 11).await.unwrap());
        assert!(!s.job_move("j1", moves, "", "", 12).await.unwrap(), "no longer QUEUED: the second move fails");
        let done = (JobState::InProgress, JobState::Succeeded);
        assert!(s.job_move("j1", done, "exit 0", "it's 42% 'full'; $(x)", 13).await.unwrap());
        let j1 = s.job("j1").await.unwrap().unwrap();
        assert_eq!(
            (j1.state, j1.reason.as_str(), j1.output.as_str()),
            (JobState::Succeeded, "exit 0", "it's 42% 'full'; $(x)")
        );
        assert_eq!(j1.updated_at, 13);
        let open: Vec<String> = s.jobs_for_device("INJ-1", 100).await.unwrap().into_iter().map(|j| j.id).collect();
        assert_eq!(open, vec!["j2".to_string()]);
        let overdue: Vec<String> = s.jobs_overdue(100).await.unwrap().into_iter().map(|j| j.id).collect();
        assert_eq!(overdue, vec!["j2".to_string()]);
        assert_eq!(s.jobs(Some("INJ-1"), 10).await.unwrap().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn rollouts_keep_their_devices_and_move_on_by_compare_and_set() {
    use crate::api::{JobKind, RolloutState, RolloutView};
    both(async |s: Store| {
        for id in ["INJ-2", "INJ-1", "INJ-3"] {
            s.device_add(&Device::new(id, "st-marys", "auto"), 5).await.unwrap();
        }
        s.device_add(&Device::new("X-1", "elsewhere", "auto"), 5).await.unwrap();
        let devices = s.devices_of_site("st-marys").await.unwrap();
        assert_eq!(devices, ["INJ-1", "INJ-2", "INJ-3"], "the site's devices, by id");
        let r = RolloutView {
            id: "roll-1".into(),
            site: "st-marys".into(),
            kind: JobKind::Install,
            target: "tool@1.0".into(),
            devices,
            batch_size: 2,
            abort_after: 1,
            consent_required: true,
            timeout_secs: 60,
            started: 0,
            state: RolloutState::Running,
            reason: String::new(),
            created_by: "boss".into(),
            created_at: 10,
            updated_at: 10,
        };
        s.rollout_add(&r).await.unwrap();
        assert_eq!(s.rollout("roll-1").await.unwrap().unwrap(), r);
        let running = (RolloutState::Running, 0);
        assert!(s.rollout_move("roll-1", running, (RolloutState::Running, 2), "batch 1", 11).await.unwrap());
        assert!(!s.rollout_move("roll-1", running, (RolloutState::Running, 2), "", 12).await.unwrap(), "moved already");
        assert_eq!(s.rollouts_running().await.unwrap(), ["roll-1"]);
        let to = (RolloutState::Aborted, 2);
        assert!(s.rollout_move("roll-1", (RolloutState::Running, 2), to, "2 failed", 13).await.unwrap());
        let got = s.rollout("roll-1").await.unwrap().unwrap();
        assert_eq!((got.state, got.started, got.reason.as_str()), (RolloutState::Aborted, 2, "2 failed"));
        assert!(s.rollouts_running().await.unwrap().is_empty());
        assert_eq!(s.rollouts(10).await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn device_certificates_keep_their_expiry_and_one_renewal_each() {
    both(async |s: Store| {
        s.device_add(&Device::new("INJ-1", "st-marys", "auto"), 5).await.unwrap();
        s.cert_seen("INJ-1", 1_000, 10).await.unwrap();
        s.cert_seen("not-registered", 1_000, 10).await.expect("a device the hub does not know: nothing kept, no error");
        assert!(s.cert_of("not-registered").await.unwrap().is_none());
        let c = s.cert_of("INJ-1").await.unwrap().unwrap();
        assert_eq!((c.not_after, c.renewal()), (1_000, None));
        assert_eq!(s.cert_counts(2_000).await.unwrap(), (1, 0), "expiring before 2 000");
        assert_eq!(s.cert_counts(500).await.unwrap(), (0, 0));

        assert_eq!(s.cert_request("INJ-1", "csr-1", 20).await.unwrap().renewal(), Some("pending"));
        assert_eq!(s.cert_counts(500).await.unwrap(), (0, 1));
        // Only for the request on record.
        assert!(!s.cert_issue("INJ-1", "csr-0", ("cert", 9_000), "boss", 30).await.unwrap());
        assert!(s.cert_issue("INJ-1", "csr-1", ("cert", 9_000), "boss", 30).await.unwrap());
        assert_eq!(s.cert_of("INJ-1").await.unwrap().unwrap().renewal(), Some("issued"));
        s.cert_seen("INJ-1", 9_000, 40).await.unwrap();
        let c = s.cert_of("INJ-1").await.unwrap().unwrap();
        assert_eq!((c.renewal(), c.cert.as_str(), c.requested_at), (Some("installed"), "cert", 20));
        // A new request replaces the old and what was issued for it.
        let c = s.cert_request("INJ-1", "csr-2", 50).await.unwrap();
        assert_eq!((c.renewal(), c.cert.as_str(), c.issued_not_after), (Some("pending"), "", 0));
        assert_eq!(s.certs().await.unwrap().len(), 1);
    })
    .await;
}

//! The hub on PostgreSQL, backed up with `pg_dump` and restored with
//! `pg_restore` after its schema is lost (as docs/operator.md says): the
//! restored hub lists the same sessions and its audit chain verifies.
use std::process::Command;

use serde_json::json;

use crate::harness::*;
use crate::hub::{add_user, hub_cli, hub_client, login, run, token_of};

/// The test PostgreSQL's URL, or `None` (CI sets it: .ci/run).
fn postgres() -> Option<String> {
    let url = std::env::var("TETHER_TEST_POSTGRES").ok();
    if url.is_none() {
        assert!(std::env::var_os("CI").is_none(), "CI must set TETHER_TEST_POSTGRES (.ci/run starts PostgreSQL)");
        eprintln!("SKIPPED: TETHER_TEST_POSTGRES is not set");
    }
    url
}

fn pg(tool: &str, args: &[&str]) {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_on_postgres_restored_from_pg_dump_has_the_same_sessions_and_a_whole_audit_chain() {
    let Some(url) = postgres() else { return };
    // A schema of its own in the test database, as the hub's whole database.
    let schema = format!("t_{}", hex::encode(tether::random_bytes::<6>()));
    pg("psql", &[&url, "-qc", &format!("CREATE SCHEMA {schema}")]);
    let sep = if url.contains('?') { '&' } else { '?' };
    let hub_url = format!("{url}{sep}options=-csearch_path%3D{schema}");
    let extra: &'static str = Box::leak(format!("database = \"{hub_url}\"\n").into_boxed_str());
    let mut fleet = Fleet::start(Opts { relays: 2, twins: true, hub: true, hub_extra: extra, ..Opts::default() }).await;
    hub_cli(&fleet, &["device", "add", DEVICE, "--site", "st-marys", "--consent", "auto"], "").await;
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let profile = login(&fleet, "boss", &boss).await;
    let token = token_of(&profile);
    let grant = async |reason: &str| {
        let body = json!({"device": DEVICE, "service": "echo", "reason": reason, "client_key": "00ff"});
        let g: serde_json::Value = hub_client(&fleet).post("/api/v1/sessions", Some(&token), &body).await.unwrap();
        g["session"].as_str().unwrap().to_string()
    };
    let ids = [grant("INC-1").await, grant("INC-2").await];
    let list = async || -> Vec<String> {
        let s: Vec<serde_json::Value> = hub_client(&fleet).get("/api/v1/sessions", Some(&token)).await.unwrap();
        let mut ids: Vec<String> = s.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
        ids.sort();
        ids
    };
    let before = list().await;
    assert!(ids.iter().all(|i| before.contains(i)), "{before:?}");

    // Online, consistent: pg_dump while the hub runs.
    let dump = fleet.dir().join("hub.dump");
    pg("pg_dump", &["--format=custom", "--schema", &schema, "--file", dump.to_str().unwrap(), &url]);
    let later = grant("INC-3").await;

    // The database is lost; the dump is restored with the hub stopped.
    fleet.restart_hub_after(|_| {
        pg("psql", &[&url, "-qc", &format!("DROP SCHEMA {schema} CASCADE")]);
        pg("pg_restore", &["--dbname", &url, dump.to_str().unwrap()]);
    });
    let s: Vec<serde_json::Value> = hub_client(&fleet).get("/api/v1/sessions", Some(&token)).await.unwrap();
    let mut after: Vec<String> = s.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    after.sort();
    assert_eq!(after, before, "the restored hub lists other sessions");
    assert!(!after.contains(&later), "a session granted after the dump came back");
    let export = fleet.dir().join("hub-audit.jsonl");
    let args =
        ["audit", "export", "--since", "0", "--profile", profile.to_str().unwrap(), "--out", export.to_str().unwrap()];
    let ex = run(&args, "").await;
    assert!(ex.0, "{ex:?}");
    let verified = run(&["audit", "verify", export.to_str().unwrap()], "").await;
    assert!(verified.0, "the restored hub's audit chain does not verify: {verified:?}");
    pg("psql", &[&url, "-qc", &format!("DROP SCHEMA {schema} CASCADE")]);
}

//! The hub on PostgreSQL, backed up with `pg_dump` and restored with
//! `pg_restore` after its schema is lost (as docs/operator.md says): the
//! restored hub lists the same sessions and its audit chain verifies.
use std::process::Command;

use crate::harness::*;
use crate::hub::{add_user, hub_cli, login, token_of};
use crate::restarts::{audit_verifies, grant, session_ids};

/// The test PostgreSQL's URL, or `None` (CI sets it: .ci/run).
pub fn postgres() -> Option<String> {
    let url = std::env::var("TETHER_TEST_POSTGRES").ok();
    if url.is_none() {
        assert!(std::env::var_os("CI").is_none(), "CI must set TETHER_TEST_POSTGRES (.ci/run starts PostgreSQL)");
        eprintln!("SKIPPED: TETHER_TEST_POSTGRES is not set");
    }
    url
}

pub fn pg(tool: &str, args: &[&str]) {
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
    let ids = [grant(&fleet, &token, "INC-1").await, grant(&fleet, &token, "INC-2").await];
    let before = session_ids(&fleet, &token).await;
    assert!(ids.iter().all(|i| before.contains(i)), "{before:?}");

    // Online, consistent: pg_dump while the hub runs.
    let dump = fleet.dir().join("hub.dump");
    pg("pg_dump", &["--format=custom", "--schema", &schema, "--file", dump.to_str().unwrap(), &url]);
    let later = grant(&fleet, &token, "INC-3").await;

    // The database is lost; the dump is restored with the hub stopped.
    fleet.restart_hub_after(|_| {
        pg("psql", &[&url, "-qc", &format!("DROP SCHEMA {schema} CASCADE")]);
        pg("pg_restore", &["--dbname", &url, dump.to_str().unwrap()]);
    });
    let after = session_ids(&fleet, &token).await;
    assert_eq!(after, before, "the restored hub lists other sessions");
    assert!(!after.contains(&later), "a session granted after the dump came back");
    audit_verifies(&fleet, &profile).await;
    pg("psql", &[&url, "-qc", &format!("DROP SCHEMA {schema} CASCADE")]);
}

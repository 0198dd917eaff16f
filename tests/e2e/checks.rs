//! `--check` of the relay, the hub and the agent finds what their start or
//! their peers would refuse, and a start with a certificate that is not the
//! process's own (its key, role or name) stops at once, naming what to fix.
use std::path::Path;

use tether::tls::pki::Validity;

use crate::harness::*;
use crate::hub::run;
use crate::traffic::eventually;

fn relay_toml(dir: &Path, pki: &Pki, name: &str, cert: &str, crl: Option<&Path>) -> String {
    let path = dir.join(format!("{name}-{cert}.toml"));
    let crl = crl.map(|c| format!("crl = \"{}\"\n", c.display())).unwrap_or_default();
    let text = format!(
        "name = \"{name}\"\ncontrol = \"127.0.0.1:0\"\ndata = \"127.0.0.1:0\"\nclient = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
         ca = \"{d}/ca.pem\"\ncert = \"{d}/{cert}.pem\"\nkey = \"{d}/{cert}.key\"\ngrant_public_key = \"{d}/grant.pub\"\n\
         audit_log = \"{a}\"\n{crl}",
        d = pki.dir.display(),
        a = dir.join(format!("{name}-audit.jsonl")).display(),
    );
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into()
}

/// `tether ROLE --config CFG --check`: (passed, stdout + stderr).
async fn check(role: &str, cfg: &str) -> (bool, String) {
    let (ok, out, err) = run(&[role, "--config", cfg, "--check"], "").await;
    (ok, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_agent_checks_find_a_certificate_that_is_not_theirs_and_their_start_refuses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, pki) = (tmp.path(), Pki::new(tmp.path()));

    let good = relay_toml(dir, &pki, "relay-a", "relay-a", None);
    let (ok, out) = check("relay", &good).await;
    assert!(ok && out.contains(": ok") && out.contains("certificate: relay relay-a, until "), "{out}");
    assert!(out.contains("grant keys: 1 in") && out.contains("twin: none"), "{out}");

    // relay-a's config with relay-b's certificate: its twin would refuse it
    // as not_the_twin, the hub would know it by the other name.
    let named_b = relay_toml(dir, &pki, "relay-a", "relay-b", None);
    let (ok, out) = check("relay", &named_b).await;
    let want = "is the certificate of relay \"relay-b\", but the config names this relay \"relay-a\"";
    assert!(!ok && out.contains("has 1 problem(s)") && out.contains(want), "{out}");
    let (ok, _, err) = run(&["relay", "--config", &named_b], "").await;
    assert!(!ok && err.contains(want), "the start refuses it too: {err}");

    // A device's certificate on a relay; a key that is not the certificate's.
    let (ok, out) = check("relay", &relay_toml(dir, &pki, DEVICE, DEVICE, None)).await;
    assert!(
        !ok && out.contains("is a device certificate") && out.contains("a relay needs a relay certificate"),
        "{out}"
    );
    std::fs::copy(pki.path("relay-b.key"), pki.path("mixed.key")).unwrap();
    std::fs::copy(pki.path("relay-a.pem"), pki.path("mixed.pem")).unwrap();
    let (ok, out) = check("relay", &relay_toml(dir, &pki, "relay-a", "mixed", None)).await;
    assert!(!ok && out.contains("mixed.key is not the private key of"), "{out}");

    // Revoked by the CRL the relay reads: its peers would refuse it.
    let crl = dir.join("crl.pem");
    let serial = tether::tls::serial_of(&tether::tls::load_certs(&pki.path("relay-a.pem")).unwrap()[0]).unwrap();
    std::fs::write(&crl, pki.ca.crl(&[serial]).unwrap()).unwrap();
    let (ok, out) = check("relay", &relay_toml(dir, &pki, "relay-a", "relay-a", Some(&crl))).await;
    assert!(!ok && out.contains("the certificate is revoked by") && out.contains("crl.pem"), "{out}");

    // The agent: another device's certificate, then an expired one of its own.
    let relay = RelayProc::stand_in("127.0.0.1:1".parse().unwrap(), dir);
    let echo = "127.0.0.1:9".parse().unwrap();
    let other = pki.device_cert("dev-other", Validity::days(30));
    let cfg = write_agent_config(dir, &pki, &[&relay], echo, &Opts::default(), (&other.0, &other.1));
    let (ok, out) = check("agent", cfg.to_str().unwrap()).await;
    assert!(
        !ok && out.contains(&format!(
            "the certificate of device \"dev-other\", but the config names this device \"{DEVICE}\""
        )),
        "{out}"
    );
    let (ok, _, err) = run(&["agent", "--config", cfg.to_str().unwrap()], "").await;
    assert!(!ok && err.contains("dev-other"), "the agent's start refuses it: {err}");

    let expired = pki.device_cert(DEVICE, Validity::expired());
    let cfg = write_agent_config(dir, &pki, &[&relay], echo, &Opts::default(), (&expired.0, &expired.1));
    let (ok, out) = check("agent", cfg.to_str().unwrap()).await;
    assert!(!ok && out.contains("the certificate expired at") && out.contains("issue a new one"), "{out}");
    // Its start goes on (a replaced certificate is picked up), saying why
    // its relays will refuse it.
    let mut agent = start_agent(dir, &cfg);
    eventually("the agent logs its expired certificate", async || {
        std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default().contains("the certificate expired at")
    })
    .await;
    agent.kill();

    // A renewal a crash interrupted: the new key is in place, its
    // certificate still waits beside the old one. The start completes it
    // before it checks the pair.
    let (own, next) = (pki.device_cert(DEVICE, Validity::days(30)), pki.device_cert(DEVICE, Validity::days(60)));
    let (cert, key) = (dir.join("device.pem"), dir.join("device.key"));
    std::fs::copy(&own.0, &cert).unwrap();
    std::fs::copy(&next.1, &key).unwrap();
    std::fs::copy(&next.0, dir.join("device.pem.next")).unwrap();
    let cfg = write_agent_config(dir, &pki, &[&relay], echo, &Opts::default(), (&cert, &key));
    let mut agent = start_agent(dir, &cfg);
    eventually("the agent completes the install and runs", async || {
        std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default().contains("agent running")
    })
    .await;
    agent.kill();
    assert_eq!(std::fs::read(&cert).unwrap(), std::fs::read(&next.0).unwrap(), "the renewed certificate is in place");

    let (ok, out) = check("agent", cfg.to_str().unwrap()).await;
    assert!(
        ok && out.contains(&format!("certificate: device {DEVICE}, until "))
            && out.contains("services: echo -> 127.0.0.1:9"),
        "{out}"
    );
}

fn hub_toml(dir: &Path, pki: &Pki, database: &str, key: &str) -> String {
    let path = dir.join("hub-check.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nca = \"{d}/ca.pem\"\ncert = \"{d}/hub.pem\"\nkey = \"{d}/{key}\"\n\
         grant_signing_key = \"{d}/grant.key\"\ndatabase = \"{database}\"\n\n[[relays]]\nname = \"relay-a\"\naddr = \"127.0.0.1:1\"\n",
        d = pki.dir.display(),
    );
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_check_reaches_its_database_and_reads_its_schema_without_changing_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, pki) = (tmp.path(), Pki::new(tmp.path()));
    let db = dir.join("hub.db");
    let cfg = hub_toml(dir, &pki, &format!("sqlite:{}", db.display()), "hub.key");
    let (ok, out) = check("hub", &cfg).await;
    assert!(
        ok && out.contains("certificate: hub hub, until ") && out.contains("sqlite, empty: the hub creates its tables"),
        "{out}"
    );
    assert!(!db.exists(), "the check created no database");

    // An admin command creates it; the check then finds this hub's schema.
    let (ok, _, err) = run(&["hub", "--config", &cfg, "site", "set", "st-marys"], "").await;
    assert!(ok, "{err}");
    let (ok, out) = check("hub", &cfg).await;
    assert!(ok && out.contains("sqlite, schema version ") && out.contains(", this hub's"), "{out}");
    // A newer hub's database is not this one's to run on.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("INSERT INTO schema_migrations (version) VALUES (999)", [])
        .unwrap();
    let (ok, out) = check("hub", &cfg).await;
    assert!(!ok && out.contains("schema version 999: newer than this hub's"), "{out}");
    // Nor does the hub start on it, or an admin command run.
    let (ok, _, err) = run(&["hub", "--config", &cfg], "").await;
    assert!(!ok && err.contains("the database's schema version 999 is newer than this hub's"), "{err}");
    let (ok, _, err) = run(&["hub", "--config", &cfg, "site", "set", "st-marys"], "").await;
    assert!(!ok && err.contains("schema version 999 is newer"), "{err}");

    // A relay's key with the hub's certificate: the start stops at once.
    let bad_key = hub_toml(dir, &pki, &format!("sqlite:{}", db.display()), "relay-a.key");
    let (ok, out) = check("hub", &bad_key).await;
    assert!(!ok && out.contains("relay-a.key is not the private key of"), "{out}");
    let (ok, _, err) = run(&["hub", "--config", &bad_key], "").await;
    assert!(!ok && err.contains("relay-a.key is not the private key of"), "{err}");

    // PostgreSQL: a wrong password is the hub's end; a server that does not
    // answer, one the hub would wait for.
    let Some(url) = std::env::var("TETHER_TEST_POSTGRES").ok() else {
        assert!(std::env::var_os("CI").is_none(), "CI must set TETHER_TEST_POSTGRES (.ci/run starts PostgreSQL)");
        eprintln!("SKIPPED (PostgreSQL part): TETHER_TEST_POSTGRES is not set");
        return;
    };
    let (user_pw, host) = url.trim_start_matches("postgres://").split_once('@').unwrap();
    let user = user_pw.split(':').next().unwrap();
    let (ok, out) =
        check("hub", &hub_toml(dir, &pki, &format!("postgres://{user}:not-the-password@{host}"), "hub.key")).await;
    assert!(!ok && out.contains("28P01") && out.contains("(the hub would not start)"), "{out}");
    assert!(!out.contains("not-the-password"), "the check prints no password: {out}");
    let closed = free_port();
    let nobody = format!("postgres://{user}:x@{closed}/tether");
    let (ok, out) = check("hub", &hub_toml(dir, &pki, &nobody, "hub.key")).await;
    assert!(
        !ok && out.contains("unreachable") && out.contains("(the hub would start, answer 503 and wait for it)"),
        "{out}"
    );
}

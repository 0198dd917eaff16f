//! Device certificate renewal through the relays, with the fleet CA's key
//! offline: the agent asks, the hub checks and keeps the request, the CA's
//! holder signs it with `tether certs renewals --sign`, the agent checks and
//! installs the certificate and restarts as itself with it; and each request
//! or certificate that does not hold is refused by name, counted and audited.
use std::time::Duration;

use hyper::Method;
use serde_json::Value;
use sha2::Digest;
use tether::api::HubClient;
use tether::tls::pki::{Ca, Validity};
use tether::tls::renewal;

use crate::harness::*;
use crate::hub::{connect, echo_once, hub_audit, hub_client, hub_metric, run, token_of};
use crate::jobs::{as_relay, jobs_fleet, jobs_fleet_with};

async fn devices(profile: &str) -> Vec<Value> {
    let (ok, out, err) = run(&["devices", "--profile", profile, "--json"], "").await;
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_certificate_is_renewed_through_the_relays_with_the_ca_offline() {
    let opts = Opts { relays: 2, twins: true, hub: true, repo: true, agent: false, ..Opts::default() };
    let (mut fleet, p) = jobs_fleet_with(opts.clone()).await;
    // A certificate with 10 days left; the agent renews 30 days ahead and
    // checks every second.
    let (cert, key, _) = fleet.pki.device_cert(DEVICE, Validity::days(10));
    let old = std::fs::read_to_string(&cert).unwrap();
    let refs: Vec<&RelayProc> = fleet.relays.iter().collect();
    let cfg = write_agent_config(fleet.dir(), &fleet.pki, &refs, fleet.echo, &opts, (&cert, &key));
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("cert_renew_days = 30\ncert_check_secs = 1\n{text}")).unwrap();
    fleet.agent = Some(start_agent(fleet.dir(), &cfg));
    let pid = fleet.agent.as_ref().unwrap().pid();

    // The request reaches the hub; the fleet view says what waits for whom.
    let mut listed = Vec::new();
    eventually("the renewal request is at the hub", async || {
        let (ok, out, _) = run(&["certs", "renewals", "--profile", &p, "--json"], "").await;
        listed = if ok { serde_json::from_str::<Vec<Value>>(&out).unwrap() } else { vec![] };
        !listed.is_empty()
    })
    .await;
    assert_eq!(listed[0]["device"], DEVICE, "{listed:?}");
    assert!(listed[0]["csr"].as_str().unwrap().contains("CERTIFICATE REQUEST"));
    let d = devices(&p).await;
    assert_eq!(d[0]["cert_renewal"], "pending", "{d:?}");
    let (ok, table, _) = run(&["devices", "--profile", &p], "").await;
    assert!(ok && table.contains("days left") && table.contains("renewal waits for the CA"), "{table}");
    let (ok, out, _) = run(&["certs", "renewals", "--profile", &p], "").await;
    assert!(ok && out.contains(DEVICE) && out.contains("--sign --ca"), "{out}");
    assert_eq!(hub_metric(&fleet, "tether_hub_cert_renewals_pending", &[]).await, 1.0);
    assert_eq!(hub_metric(&fleet, "tether_hub_device_certs_expiring", &[]).await, 1.0);
    let with = |p: &std::path::Path, ext: &str| std::path::PathBuf::from(format!("{}.{ext}", p.display()));
    assert!(with(&key, "next").exists(), "the next key waits on the device");

    // Signed where the CA's key is; the device installs it and restarts.
    let ca_dir = fleet.pki.dir.to_str().unwrap().to_string();
    let (ok, out, err) = run(&["certs", "renewals", "--profile", &p, "--sign", "--ca", &ca_dir], "").await;
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("{DEVICE}: signed, valid until")), "{out}");
    let mut installed = Value::Null;
    for _ in 0..300 {
        installed = devices(&p).await.remove(0);
        if installed["cert_renewal"] == "installed" && installed["status"] == "online" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(installed["cert_renewal"], "installed", "{installed}");
    let left = installed["cert_expires"].as_u64().unwrap() - tether::util::now_secs();
    assert!(left > 800 * 86_400, "the device presents the new certificate: {left} s left");
    assert_eq!(hub_metric(&fleet, "tether_hub_cert_renewals_pending", &[]).await, 0.0);
    assert_eq!(hub_metric(&fleet, "tether_hub_device_certs_expiring", &[]).await, 0.0);

    // On the device: the new files in place, the old kept, keys 0600, and
    // the same process (it replaced itself).
    use std::os::unix::fs::PermissionsExt;
    let new = std::fs::read_to_string(&cert).unwrap();
    assert_ne!(new, old, "the certificate file was replaced");
    assert_eq!(std::fs::read_to_string(with(&cert, "prev")).unwrap(), old);
    for k in [key.clone(), with(&key, "prev")] {
        assert_eq!(std::fs::metadata(&k).unwrap().permissions().mode() & 0o777, 0o600, "{}", k.display());
    }
    assert!(!with(&key, "next").exists() && !with(&cert, "next").exists());
    let der = renewal::der_of(&new).unwrap();
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let pair = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    assert_eq!(renewal::cert_key(&der).unwrap(), pair.public_key_raw(), "the key in place is the certificate's");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "the agent restarted in place");

    // A session through the hub: the client's end-to-end TLS checks the
    // device's new certificate.
    let (mut child, addr, _) = connect(&p, "echo", "after the renewal").await;
    echo_once(&addr, b"renewed").await;
    child.kill().await.unwrap();

    // The device's audit chain verifies with the old certificate across the
    // change, and says what happened; so does the hub's.
    let log = fleet.dir().join("agent-audit.jsonl");
    let (ok, out, err) =
        run(&["audit", "verify", log.to_str().unwrap(), "--cert", &with(&cert, "prev").display().to_string()], "")
            .await;
    assert!(ok, "{out}{err}");
    let events: Vec<String> =
        tether::audit::read_all(&log).iter().map(|r| r["event"].as_str().unwrap_or("").to_string()).collect();
    for e in ["cert_requested", "cert_renewed", "agent_restarting"] {
        assert!(events.iter().any(|x| x == e), "agent audit lacks {e}: {events:?}");
    }
    let hub: Vec<String> = hub_audit(&fleet, &token_of(std::path::Path::new(&p)))
        .await
        .iter()
        .map(|r| r["event"].as_str().unwrap_or("").to_string())
        .collect();
    for e in ["cert_requested", "cert_issued", "cert_installed"] {
        assert!(hub.iter().any(|x| x == e), "hub audit lacks {e}");
    }
}

/// What a relay forwards for `device`: `csr`, `cert` (DER) and a proof by `key`.
async fn ask(relay: &HubClient, device: &str, csr: &str, cert: &[u8], key: &std::path::Path) -> (u16, Value) {
    let digest = hex::encode(sha2::Sha256::digest(csr.as_bytes()));
    let proof = tether::audit::Signer::load(key).unwrap().sign_as(tether::audit::sign::RENEWAL, &digest);
    let body = serde_json::json!({"csr": csr, "cert": hex::encode(cert), "proof": proof});
    let path = format!("/api/v1/device/{device}/cert");
    let (status, body) =
        relay.call(Method::POST, &path, None, Some(serde_json::to_vec(&body).unwrap().into())).await.unwrap();
    (status.as_u16(), serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_requests_and_certificates_that_do_not_hold_are_refused_by_name() {
    let (fleet, p) = jobs_fleet(false).await;
    let relay = as_relay(&fleet);
    let (cert, key, _) = fleet.pki.device_cert(DEVICE, Validity::days(10));
    let current = renewal::der_of(&std::fs::read_to_string(&cert).unwrap()).unwrap();
    let next = rcgen::KeyPair::generate().unwrap();
    let csr = renewal::make_request(DEVICE, &next).unwrap();
    let relay_key = fleet.pki.path("relay-a.key");
    let relay_cert = renewal::der_of(&std::fs::read_to_string(fleet.pki.path("relay-a.pem")).unwrap()).unwrap();
    let (other_cert, other_key, _) = fleet.pki.device_cert("INJ-0001", Validity::days(10));
    let other = renewal::der_of(&std::fs::read_to_string(&other_cert).unwrap()).unwrap();
    let same = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&key).unwrap()).unwrap();

    // A relay cannot ask in the device's name: the proof must be the device key's.
    let refusals = [
        ("bad_proof", ask(&relay, DEVICE, &csr, &current, &relay_key).await),
        ("bad_certificate", ask(&relay, DEVICE, &csr, &relay_cert, &relay_key).await),
        ("wrong_device", ask(&relay, DEVICE, &csr, &other, &other_key).await),
        ("csr_mismatch", ask(&relay, DEVICE, &renewal::make_request("INJ-0001", &next).unwrap(), &current, &key).await),
        ("same_key", ask(&relay, DEVICE, &renewal::make_request(DEVICE, &same).unwrap(), &current, &key).await),
        // A device the hub does not know (a fleet certificate, never added).
        (
            "no_device",
            ask(&relay, "INJ-0001", &renewal::make_request("INJ-0001", &next).unwrap(), &other, &other_key).await,
        ),
        (
            "bad_csr",
            ask(
                &relay,
                DEVICE,
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                &current,
                &key,
            )
            .await,
        ),
    ];
    for (code, (status, body)) in &refusals {
        assert_eq!((*status, body["error"].as_str()), (400, Some(*code)), "{body}");
    }
    let (status, body) = ask(&relay, DEVICE, &csr, &current, &key).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("pending")), "{body}");

    // The admin's answer must be the fleet CA's, for the request's key.
    let token = token_of(std::path::Path::new(&p));
    let issue = async |cert_pem: String| {
        let body = serde_json::to_vec(&serde_json::json!({ "cert": cert_pem })).unwrap();
        let path = format!("/api/v1/cert-requests/{DEVICE}");
        let (s, b) = hub_client(&fleet).call(Method::POST, &path, Some(&token), Some(body.into())).await.unwrap();
        (s.as_u16(), serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null))
    };
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = Ca::generate("a foreign CA").unwrap();
    foreign.write(foreign_dir.path()).unwrap();
    let by_foreign = renewal::sign_request(&Ca::load(foreign_dir.path()).unwrap(), DEVICE, &csr, 825).unwrap();
    let (s, b) = issue(by_foreign).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("bad_certificate")), "{b}");
    let other_key_csr = renewal::make_request(DEVICE, &rcgen::KeyPair::generate().unwrap()).unwrap();
    let (s, b) = issue(renewal::sign_request(&fleet.pki.ca, DEVICE, &other_key_csr, 825).unwrap()).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("wrong_key")), "{b}");
    let (s, b) = issue("not a certificate".into()).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("bad_certificate")), "{b}");

    // Each refusal counted and audited; the good request still waits.
    for code in ["bad_proof", "csr_mismatch", "same_key", "bad_csr", "wrong_key", "wrong_device"] {
        assert!(
            hub_metric(&fleet, "tether_hub_refusals_total", &[&format!("reason=\"{code}\"")]).await >= 1.0,
            "{code}"
        );
    }
    let audit = hub_audit(&fleet, &token).await;
    let refused: Vec<&str> =
        audit.iter().filter(|r| r["event"] == "cert_renewal_refused").filter_map(|r| r["reason"].as_str()).collect();
    for code in [
        "bad_proof",
        "bad_certificate",
        "wrong_device",
        "csr_mismatch",
        "same_key",
        "bad_csr",
        "wrong_key",
        "no_device",
    ] {
        assert!(refused.contains(&code), "{code} not audited: {refused:?}");
    }
    let (ok, out, _) = run(&["certs", "renewals", "--profile", &p, "--json"], "").await;
    let list: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert!(ok && list.len() == 1 && list[0]["csr"] == csr, "{out}");

    // A retired device's certificate is not renewed: its request is refused,
    // an admin's answer to the one on record too, and it leaves the list.
    crate::hub::hub_cli(&fleet, &["device", "retire", DEVICE, "--reason", "scrapped"], "").await;
    let newer = renewal::make_request(DEVICE, &rcgen::KeyPair::generate().unwrap()).unwrap();
    let (status, body) = ask(&relay, DEVICE, &newer, &current, &key).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("device_retired")), "{body}");
    let (s, b) = issue(renewal::sign_request(&fleet.pki.ca, DEVICE, &csr, 825).unwrap()).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("device_retired")), "{b}");
    let (ok, out, _) = run(&["certs", "renewals", "--profile", &p, "--json"], "").await;
    assert!(ok && serde_json::from_str::<Vec<Value>>(&out).unwrap().is_empty(), "{out}");
    let audit = hub_audit(&fleet, &token).await;
    let retired = |r: &&Value| r["event"] == "cert_renewal_refused" && r["reason"] == "device_retired";
    assert_eq!(audit.iter().filter(retired).count(), 2, "both refusals audited");
}

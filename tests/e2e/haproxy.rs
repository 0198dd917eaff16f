//! Real HAProxy (Debian's package) in front of the twins, running
//! deploy/haproxy/haproxy.cfg as shipped: a session through it survives the
//! death of the twin it landed on.
use std::process::{Command, Stdio};

use tether::client::{ClientSession, Profile, RelayEntry};

use crate::harness::*;

pub fn haproxy() -> Option<&'static str> {
    ["/usr/sbin/haproxy", "/usr/bin/haproxy"].into_iter().find(|p| std::path::Path::new(p).exists())
}

/// Writes `cfg` to `path`, has HAProxy check it, and runs it (stopped when dropped).
pub fn start(bin: &str, path: &std::path::Path, cfg: &str) -> Proc {
    std::fs::write(path, cfg).unwrap();
    let check = Command::new(bin).arg("-c").arg("-f").arg(path).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    Proc {
        child: Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    }
}

/// deploy/haproxy/haproxy.cfg as shipped, with this fleet's addresses: the
/// specialists' frontend on `front`, each relay's client port, health
/// checks on its admin address and port, the hub's frontend on `hub_front`
/// (its backend unused here). Connections to the relays come from the
/// balancer's address 127.0.0.9; `maxconn` fits this host's fd limit.
fn shipped_config(fleet: &Fleet, front: std::net::SocketAddr, hub_front: std::net::SocketAddr) -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy/haproxy.cfg")).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let mut line = line.replace("maxconn 100000", "maxconn 1000");
        line = line.replace("bind :17443", &format!("bind {front}"));
        line = line.replace("bind :17010", &format!("bind {hub_front}"));
        line = line.replace("hub.tether.example:17010", &free_port().to_string());
        for (i, (name, mgmt)) in [("relay-a", "10.0.0.11"), ("relay-b", "10.0.0.12")].into_iter().enumerate() {
            if line.trim_start().starts_with(&format!("server {name} ")) {
                let r = &fleet.relays[i];
                line = line
                    .replace(&format!("{name}.tether.example:17443"), &r.client.to_string())
                    .replace("send-proxy-v2", "send-proxy-v2 source 127.0.0.9")
                    .replace(
                        &format!("addr {mgmt} port 17090"),
                        &format!("addr {} port {}", r.admin.ip(), r.admin.port()),
                    );
            }
        }
        out += &line;
        out.push('\n');
    }
    assert!(!out.contains("tether.example") && !out.contains("10.0.0."), "an address left unreplaced: {out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_through_haproxy_survives_the_twin_behind_it() {
    let Some(bin) = haproxy() else {
        // CI installs it (.ci/run); elsewhere say so instead of failing.
        assert!(std::env::var("CI").is_err(), "haproxy is not installed but CI must run this test");
        eprintln!("SKIPPED: haproxy is not installed (apt-get install -y haproxy)");
        return;
    };
    // The balancer's address as the relays see it: they trust its PROXY headers.
    let trusted = "proxy_protocol_from = [\"127.0.0.9/32\"]\n";
    let mut fleet = Fleet::start(Opts { relays: 2, twins: true, relay_top: trusted, ..Opts::default() }).await;
    // The balancer may send a connection's join to the twin that did not
    // admit the session: it knows the session only once the link is up.
    fleet.wait_twin_links().await;
    let front = free_port();
    let cfg = shipped_config(&fleet, front, free_port());
    assert!(cfg.contains("send-proxy-v2") && cfg.contains("option httpchk GET /readyz"), "{cfg}");
    let _lb = start(bin, &fleet.dir().join("haproxy.cfg"), &cfg);
    let profile = Profile {
        // The grant names the pair by name (relay-a, whose twin is relay-b); the address is the balancer's.
        relays: vec![RelayEntry {
            name: "relay-a".into(),
            addr: front.to_string(),
            server_name: Some("localhost".into()),
        }],
        ..fleet.profile()
    };
    let mut session = None;
    for _ in 0..100 {
        match ClientSession::open(&profile, DEVICE, "echo").await {
            Ok(s) => {
                session = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    let session = session.expect("a session through HAProxy");
    let id = session.id.to_string();
    let landed = (0..2)
        .find(|&i| fleet.relay_audit(i).iter().any(|r| r["event"] == "session_start" && r["session"] == id.as_str()))
        .expect("the session landed on a twin");

    let addr = serve(&session).await;
    let transfer = Transfer::start(addr, random(32 << 20)).await;
    // Kill whichever twin carries the bytes (leastconn may put the tunnel on
    // the twin of the one holding the control leg).
    let mut carrier = landed;
    eventually("the transfer is under way", async || {
        for i in 0..2 {
            if fleet.metric(i, "tether_relay_bytes_total", &["to_client"]).await >= (4 << 20) as f64 {
                carrier = i;
                return true;
            }
        }
        false
    })
    .await;
    fleet.relays[carrier].proc.kill(); // SIGKILL the twin behind the load balancer
    transfer.finish("SIGKILL behind HAProxy").await;
    assert!(session.end_reason().is_none());
    assert!(fleet.relay_audit(1 - landed).iter().any(|r| r["event"] == "session_adopted"));
    eventually("the surviving twin carried the resume", async || {
        fleet.metric(1 - carrier, "tether_relay_tunnels_resumed_total", &[]).await >= 1.0
    })
    .await;
}

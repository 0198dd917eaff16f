//! Foundation-level redundancy: the agent re-attaches after a relay restart,
//! and a client uses the twin when the first relay is down.
use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reattaches_after_a_relay_restart() {
    let mut fleet = Fleet::start(Opts::default()).await;
    let cfg = fleet.dir().join("relay-a.toml");
    // Pin the ports the relay got, so the restarted relay is where the agent dials.
    let r = &fleet.relays[0];
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replacen("127.0.0.1:0", &r.control.to_string(), 1)
        .replacen("127.0.0.1:0", &r.data.to_string(), 1)
        .replacen("127.0.0.1:0", &r.client.to_string(), 1)
        .replacen("127.0.0.1:0", &r.admin.to_string(), 1);
    std::fs::write(&cfg, text).unwrap();
    fleet.relays[0].proc.kill();

    let child = std::process::Command::new(BIN)
        .args(["relay", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    fleet.relays[0].proc = Proc { child };
    // Back-off starts at 0.5 s (±50 %) and doubles; a few seconds are plenty.
    eventually("the agent re-attaches", async || {
        tokio::net::TcpStream::connect(fleet.relays[0].admin).await.is_ok()
            && fleet.metric(0, "tether_relay_agents_attached", &[]).await == 1.0
    })
    .await;
    let session = fleet.session("echo").await;
    assert!(within(30, session.connect()).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_uses_the_twin_when_the_first_relay_is_down() {
    let mut fleet = Fleet::start(Opts { relays: 2, ..Opts::default() }).await;
    fleet.relays[0].proc.kill();
    let session = fleet.session("echo").await;
    assert_eq!(session.relay.name, "relay-b");
    let mut t = within(30, session.connect()).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    t.write_all(b"twin").await.unwrap();
    t.flush().await.unwrap();
    let mut b = [0u8; 4];
    within(30, t.read_exact(&mut b)).await.unwrap();
    assert_eq!(&b, b"twin");
    assert!(fleet.relay_audit(1).iter().any(|r| r["event"] == "session_start"));
}

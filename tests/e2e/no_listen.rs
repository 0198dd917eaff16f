//! "The agent never listens": no listening TCP socket and no UDP socket in the
//! agent process, while attached and while tunnelling.
use std::collections::HashSet;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

/// Socket inodes held by `pid`.
pub fn socket_inodes(pid: u32) -> HashSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
        .collect()
}

/// (tcp sockets of the process, listening tcp sockets, udp sockets) from /proc/PID/net.
fn sockets(pid: u32) -> (usize, usize, usize) {
    let mine = socket_inodes(pid);
    let mut counts = (0, 0, 0);
    for (file, udp) in [("tcp", false), ("tcp6", false), ("udp", true), ("udp6", true)] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || !mine.contains(f[9]) {
                continue;
            }
            if udp {
                counts.2 += 1;
            } else {
                counts.0 += 1;
                if f[3] == "0A" {
                    counts.1 += 1;
                }
            }
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_has_no_listening_socket_while_attached_and_tunnelling() {
    let fleet = Fleet::start(Opts { relays: 2, ..Opts::default() }).await;
    let pid = fleet.agent.as_ref().unwrap().pid();

    let (tcp, listening, udp) = sockets(pid);
    assert!(tcp >= 2, "expected the two control channels, saw {tcp} TCP sockets");
    assert_eq!((listening, udp), (0, 0), "agent listens while attached");

    let session = fleet.session("echo").await;
    let mut t = within(30, session.connect()).await.unwrap();
    t.write_all(b"ping").await.unwrap();
    t.flush().await.unwrap();
    let mut buf = [0u8; 4];
    within(30, t.read_exact(&mut buf)).await.unwrap();
    let (tcp, listening, udp) = sockets(pid);
    assert!(tcp >= 4, "expected control channels + data leg + service connection, saw {tcp}");
    assert_eq!((listening, udp), (0, 0), "agent listens while tunnelling");
}

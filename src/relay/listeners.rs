//! Binding the relay's listeners. With port 0, QUIC takes the number the TCP
//! listener got, so agents and clients find both at one address; when that
//! number is already taken on UDP, the pair is bound again on another.

use std::net::{SocketAddr, UdpSocket};

use tokio::net::TcpListener;

use super::{RelayConfig, RelayError};

/// How many times a port-0 TCP listener is bound again to find a number that
/// is free on UDP too. Each try costs two syscalls; a clash is rare (another
/// process's UDP socket on the number the kernel just gave us).
const PAIR_TRIES: usize = 64;

/// The four bound listeners of a relay.
pub struct Listeners {
    pub control: TcpListener,
    pub data: TcpListener,
    pub client: TcpListener,
    pub admin: TcpListener,
    /// The twin link listener, when a twin is configured.
    pub twin: Option<TcpListener>,
    /// QUIC for agents and for specialists (UDP), unless `quic = false`.
    pub quic: Option<(UdpSocket, UdpSocket)>,
}

/// Addresses actually bound (useful with port 0).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub control: SocketAddr,
    pub data: SocketAddr,
    pub client: SocketAddr,
    pub admin: SocketAddr,
    pub twin: Option<SocketAddr>,
    /// UDP: agents' and specialists' QUIC.
    pub quic_agents: Option<SocketAddr>,
    pub quic_clients: Option<SocketAddr>,
}

async fn tcp(what: &'static str, addr: SocketAddr) -> Result<TcpListener, RelayError> {
    TcpListener::bind(addr).await.map_err(|source| RelayError::Bind { what, addr, source })
}

fn udp(what: &'static str, addr: SocketAddr) -> Result<UdpSocket, RelayError> {
    UdpSocket::bind(addr).map_err(|source| RelayError::Bind { what, addr, source })
}

/// A TCP listener and, with QUIC on, its UDP socket: on `quic` if configured
/// apart, else on the TCP listener's own port. Also says how many numbers it
/// had to give up.
async fn pair(
    what: (&'static str, &'static str),
    addr: SocketAddr,
    quic: Option<Option<SocketAddr>>,
) -> Result<(TcpListener, Option<UdpSocket>, usize), RelayError> {
    let mut tries = 0;
    loop {
        let listener = tcp(what.0, addr).await?;
        let bound = listener.local_addr().map_err(|source| RelayError::Bind { what: what.0, addr, source })?;
        let socket = match quic {
            None => return Ok((listener, None, tries)),
            Some(Some(apart)) => udp(what.1, apart)?,
            Some(None) => match udp(what.1, bound) {
                Ok(s) => s,
                Err(RelayError::Bind { source, .. })
                    if addr.port() == 0 && source.kind() == std::io::ErrorKind::AddrInUse && tries + 1 < PAIR_TRIES =>
                {
                    tries += 1;
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        return Ok((listener, Some(socket), tries));
    }
}

impl Listeners {
    pub async fn bind(cfg: &RelayConfig) -> Result<Listeners, RelayError> {
        let quic = |apart: Option<SocketAddr>| cfg.quic.then_some(apart);
        let (data, quic_agents, _) = pair(("data", "quic-agent"), cfg.data, quic(cfg.quic_agents)).await?;
        let (client, quic_clients, _) = pair(("client", "quic-client"), cfg.client, quic(cfg.quic_clients)).await?;
        Ok(Listeners {
            control: tcp("control", cfg.control).await?,
            data,
            client,
            admin: tcp("admin", cfg.admin).await?,
            twin: match &cfg.twin {
                Some(t) => Some(tcp("twin", t.listen).await?),
                None => None,
            },
            quic: quic_agents.zip(quic_clients),
        })
    }

    pub fn addrs(&self) -> BoundAddrs {
        let a = |l: &TcpListener| l.local_addr().expect("bound listener has an address");
        BoundAddrs {
            control: a(&self.control),
            data: a(&self.data),
            client: a(&self.client),
            admin: a(&self.admin),
            twin: self.twin.as_ref().map(a),
            quic_agents: self.quic.as_ref().and_then(|(s, _)| s.local_addr().ok()),
            quic_clients: self.quic.as_ref().and_then(|(_, s)| s.local_addr().ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port-0 listener whose number is held on UDP by someone else moves to
    /// a number free on both.
    #[tokio::test]
    async fn a_port_0_pair_moves_off_a_number_taken_on_udp() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        // Hold UDP on ~1/6 of the ephemeral range, so that among 100 pairs
        // some TCP numbers clash (the odds of none are below 1e-8).
        let held: Vec<_> = (0..5000).map(|_| UdpSocket::bind(any).unwrap()).collect();
        let mut moved = 0;
        for _ in 0..100 {
            let (l, s, tries) = pair(("data", "quic-agent"), any, Some(None)).await.unwrap();
            assert_eq!(l.local_addr().unwrap().port(), s.unwrap().local_addr().unwrap().port());
            moved += tries;
        }
        assert!(moved > 0, "no clash met: the test proves nothing");
        // A number fixed in the config is never moved: its clash is an error
        // that names the listener.
        let taken = held[0].local_addr().unwrap();
        let e = pair(("data", "quic-agent"), any, Some(Some(taken))).await.expect_err("UDP number taken");
        assert!(e.to_string().contains("quic-agent") && e.to_string().contains(&taken.to_string()), "{e}");
    }
}

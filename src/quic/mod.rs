//! QUIC legs: one QUIC connection per agent-relay pair and per client
//! session, one bidirectional stream per leg (control, data, fetch, join).
//!
//! A stream carries exactly what a TCP leg carries, frame for frame, so the
//! relay's handlers serve both; only how a leg is obtained differs. TLS 1.3
//! comes with QUIC, so a QUIC leg is never "raw". The agent's and the
//! client's UDP sockets are `connect()`ed to their relay: the kernel drops
//! every datagram from anyone else, and nothing listens.
mod count;
mod leg;
mod refused;
mod socket;
mod splice;

pub use count::{OpenStream, StreamCount};
pub use leg::{Guarded, QuicLeg, send_of};
pub use splice::splice;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint, EndpointConfig, TransportConfig, VarInt};
use serde::Deserialize;

/// Which transport legs use (agent.toml and the client profile).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Race QUIC against TCP, use QUIC when it completes, fall back to TCP
    /// when UDP is blocked, and try QUIC again later.
    #[default]
    Auto,
    /// QUIC only: fail when UDP does not get through.
    Quic,
    /// TCP only (TLS, or raw legs where the relay allows them).
    Tcp,
}

impl Transport {
    pub fn parse(s: &str) -> Option<Transport> {
        match s {
            "auto" => Some(Transport::Auto),
            "quic" => Some(Transport::Quic),
            "tcp" => Some(Transport::Tcp),
            _ => None,
        }
    }

    /// `--transport auto|quic|tcp` on the command line.
    pub fn from_arg(s: &str) -> Result<Transport, String> {
        Transport::parse(s).ok_or_else(|| format!("{s:?}: expected auto, quic or tcp"))
    }
}

/// With `auto`, QUIC is tried alone this long before TCP joins the race
/// (happy eyeballs): where UDP gets through, no TCP connection is made at all.
pub const HEAD_START: Duration = Duration::from_millis(250);
/// Who dials a QUIC connection, which sets how it stays alive: the side
/// behind NAT sends the keep-alives (the relay sends none), and the idle
/// timeout (the lower of the two sides' wins) is how long silence means death.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialler {
    /// An agent: a keep-alive every 10 s (a restarted relay answers the next
    /// one with a stateless reset, so the agent re-attaches within 10 s),
    /// dead after 30 s of silence.
    Agent,
    /// A specialist's session: its control leg already sends a heartbeat
    /// every second; dead after 5 s, so that the relay frees a vanished
    /// client's session as a TCP reset would.
    Session,
    /// The relay: no keep-alives, 30 s.
    Relay,
}

impl Dialler {
    fn idle_and_keep_alive(self) -> (Duration, Option<Duration>) {
        match self {
            Dialler::Agent => (Duration::from_secs(30), Some(Duration::from_secs(10))),
            Dialler::Session => (Duration::from_secs(5), Some(Duration::from_secs(2))),
            Dialler::Relay => (Duration::from_secs(30), None),
        }
    }
}

/// Streams a peer may open at first; the limit is raised as they are used
/// ([`StreamCount`]), so an idle connection holds little state (quinn keeps
/// an entry for every stream the peer may open).
pub const INITIAL_STREAMS: u32 = 16;
/// Streams an agent may open at first on its connection to the relay: its
/// control channel and now and then a fetch leg (the relay opens the data
/// legs), so an idle agent's connection starts smaller.
pub const INITIAL_AGENT_STREAMS: u32 = 4;

/// The largest UDP payload a QUIC leg sends or accepts. quinn starts at
/// 1200 bytes and its path MTU discovery (RFC 8899 probes, never fragmented)
/// climbs towards this bound, so a path of Ethernet's 1500 bytes settles at
/// 1452 as before, a jumbo-frame LAN near 8 950, and loopback here: quinn's
/// work per packet (framing, packet protection, acknowledgements, one trip
/// through the kernel) is most of what a QUIC leg costs beyond its AES-GCM.
/// 6 500 bytes ran 1.5-1.9x faster than 1 452, and 60 000 another 1.2-1.4x
/// (`benches/iperf.sh`, docs/operator.md). quinn sends up to 10 datagrams in
/// one GSO send, which the kernel limits to 64 KiB: the vendored quinn caps
/// the batch at 64 KiB (vendor/quinn/TETHER-PATCHES.md), so that larger
/// datagrams go fewer to a send instead of failing as too large. The
/// vendored quinn-proto probes this bound first and parses a probe's
/// padding in one step: upstream's search, a dozen probes nearly this large
/// parsed a byte at a time, cost the relay 10 ms of CPU per QUIC attach.
pub const MAX_DATAGRAM: u16 = 60_000;
const _: () = assert!(MAX_DATAGRAM >= 1_200 && MAX_DATAGRAM as usize <= 65_507);

/// How many ack-eliciting packets each end of a QUIC leg asks its peer to
/// take before it must answer with an ACK at once (QUIC's ACK frequency
/// extension; the peer still answers within its `max_ack_delay`, 25 ms, at
/// once on reordering, and rides its ACKs on its own data as before).
/// QUIC's default is every second packet, which cost a new tunnelled
/// connection an ACK of its own each way and leg: the client's join and
/// first bytes, the agent's `Paired` and answer, each two packets that the
/// next data would have acknowledged anyway. With 3: 13.7-13.8 datagrams
/// per new connection instead of 16.9-17.1, the relay's, agent's and
/// forwarder's CPU together 480-486 us instead of 526-530, p50 378-384 us
/// instead of 431-443 (`probe connect` through `tether dev`, against the
/// build before, alternating, 2026-12-05); one connection's throughput level
/// or better (iperf3, three rounds: 672-721 MiB/s against 658-713 at QUIC's
/// default), echo RTT level; 9 gave the same count and throughput 2 % lower
/// (docs/operator.md).
pub const ACK_ELICITING_THRESHOLD: u32 = 3;

/// `config`, accepting datagrams up to [`MAX_DATAGRAM`] (quinn's default is
/// Ethernet's 1 472, which would cap what the peer may send).
fn large_datagrams(mut config: EndpointConfig) -> EndpointConfig {
    config.max_udp_payload_size(MAX_DATAGRAM).expect("MAX_DATAGRAM is within 1 200..=65 527");
    config
}

/// Why a QUIC leg could not be had.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("UDP socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("QUIC config: {0}")]
    Config(String),
    #[error("QUIC connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("QUIC handshake: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("QUIC handshake timed out (UDP blocked?)")]
    Timeout,
    #[error("the relay's UDP port refused it (ICMP port unreachable: no QUIC there, or UDP rejected)")]
    Refused,
}

impl From<QuicError> for std::io::Error {
    fn from(e: QuicError) -> std::io::Error {
        match e {
            QuicError::Socket(io) => io,
            QuicError::Timeout => std::io::Error::new(std::io::ErrorKind::TimedOut, e.to_string()),
            other => std::io::Error::other(other.to_string()),
        }
    }
}

/// Transport parameters; `streams` bounds the streams the peer may have open at once.
pub fn transport_config(streams: u32, side: Dialler) -> Arc<TransportConfig> {
    let (idle, keep_alive) = side.idle_and_keep_alive();
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(idle.try_into().expect("idle timeout fits")))
        .keep_alive_interval(keep_alive);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_DATAGRAM);
    t.mtu_discovery_config(Some(mtu));
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(VarInt::from_u32(ACK_ELICITING_THRESHOLD));
    t.ack_frequency_config(Some(ack));
    Arc::new(t)
}

/// A server endpoint on a bound UDP socket (the relay's listeners).
/// `reset_secret` keys its stateless resets: the same secret after a restart
/// lets the restarted relay tell its old peers at once that their
/// connections are gone (a random one would make them wait for the timeout).
/// `streams` is how many streams each peer may open at first.
pub fn server(
    socket: std::net::UdpSocket,
    tls: Arc<rustls::ServerConfig>,
    reset_secret: &[u8],
    streams: u32,
) -> Result<Endpoint, QuicError> {
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| QuicError::Config(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport_config(streams, Dialler::Relay));
    // Handshakes not yet accepted are bounded in count and buffered bytes;
    // past that quinn refuses them itself.
    cfg.max_incoming(4096).incoming_buffer_size(16 * 1024);
    socket.set_nonblocking(true)?;
    socket_buffers(&socket);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, reset_secret);
    let mut endpoint = large_datagrams(EndpointConfig::new(Arc::new(key)));
    // Connection ids carry a check keyed per endpoint; a restarted relay
    // must recognise its predecessor's ids to answer them with a reset.
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, reset_secret).as_ref()[..8]);
    let cid_key = u64::from_be_bytes(cid_key);
    endpoint.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    Ok(Endpoint::new(endpoint, Some(cfg), socket, Arc::new(quinn::TokioRuntime))?)
}

/// A QUIC connection to `addr` as `server_name`, from a UDP socket
/// `connect()`ed to that address alone.
pub async fn connect(
    addr: &str,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    (timeout, side): (Duration, Dialler),
) -> Result<Connection, QuicError> {
    let peer = tokio::net::lookup_host(addr)
        .await
        .map_err(|_| QuicError::Resolve(addr.to_string()))?
        .next()
        .ok_or_else(|| QuicError::Resolve(addr.to_string()))?;
    let (endpoint, socket) = connected_endpoint(peer)?;
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| QuicError::Config(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    // An agent's relay opens its data legs as streams (growing from
    // INITIAL_STREAMS, see agent/streams.rs); a client's opens none.
    let streams = if side == Dialler::Agent { INITIAL_STREAMS } else { 4 };
    cfg.transport_config(transport_config(streams, side));
    let connecting = endpoint.connect_with(cfg, peer, server_name)?;
    let conn = tokio::select! {
        r = tokio::time::timeout(timeout, connecting) => match r {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                endpoint.close(VarInt::from_u32(0), b"timeout");
                return Err(QuicError::Timeout);
            }
        },
        _ = refused::refused(&socket) => {
            endpoint.close(VarInt::from_u32(0), b"refused");
            return Err(QuicError::Refused);
        }
    };
    tokio::spawn(refused::watch(socket, endpoint, peer));
    Ok(conn)
}

/// An endpoint that can only talk to `peer`, and accepts no connection;
/// and its socket, which records refusals ([`refused`]).
fn connected_endpoint(peer: SocketAddr) -> Result<(Endpoint, Arc<socket::Socket>), QuicError> {
    let any: SocketAddr = if peer.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("valid address");
    let socket = std::net::UdpSocket::bind(any)?;
    socket.connect(peer)?;
    socket.set_nonblocking(true)?;
    socket_buffers(&socket);
    let socket = socket::Socket::new(socket)?;
    let endpoint = Endpoint::new_with_abstract_socket(
        large_datagrams(EndpointConfig::default()),
        None,
        socket.clone(),
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok((endpoint, socket))
}

/// Socket buffers a burst at full speed fits in ([`SOCKET_BUFFER`]).
/// Linux's default (208 KiB) overflows when a connection sends at a few
/// hundred MB/s: the kernel drops datagrams, quinn reads the drops as
/// congestion (and as an MTU black hole), and throughput halves. The
/// kernel caps the request at `net.core.rmem_max`/`wmem_max`; a buffer
/// costs memory only while datagrams wait in it.
fn socket_buffers(socket: &std::net::UdpSocket) {
    let sock = socket2::SockRef::from(socket);
    for (what, r) in
        [("receive", sock.set_recv_buffer_size(SOCKET_BUFFER)), ("send", sock.set_send_buffer_size(SOCKET_BUFFER))]
    {
        if let Err(error) = r {
            tracing::debug!(what, %error, "UDP socket buffer not raised");
        }
    }
}

/// What [`socket_buffers`] asks for, per direction.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Opens a leg: a new bidirectional stream on `conn`.
pub async fn open_leg(conn: &Connection) -> std::io::Result<QuicLeg> {
    let (send, recv) = conn.open_bi().await.map_err(std::io::Error::other)?;
    Ok(QuicLeg::new(send, recv))
}

/// Why a QUIC attempt gave no leg: in words, and in a word for metrics.
#[derive(Debug, Clone)]
pub struct Lost {
    /// `refused` (the relay's UDP port answered "port unreachable"),
    /// `no_answer` (nothing within the head start, or a handshake that
    /// timed out: UDP dropped on the way), or `failed` (anything else).
    pub kind: &'static str,
    pub why: String,
}

impl Lost {
    /// `e`, from dialling `addr`.
    pub fn dialling(addr: &str, e: QuicError) -> Lost {
        let kind = match e {
            QuicError::Refused => "refused",
            QuicError::Timeout => "no_answer",
            _ => "failed",
        };
        Lost { kind, why: format!("QUIC to {addr}: {e}") }
    }

    /// Anything else: a stream that could not be opened, say.
    pub fn failed(why: String) -> Lost {
        Lost { kind: "failed", why }
    }
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

impl From<Lost> for String {
    fn from(l: Lost) -> String {
        l.why
    }
}

/// `auto`'s race: `quic` alone for [`HEAD_START`], then `tcp` (made by
/// `tcp()`) beside it; the first to succeed wins, the other is dropped.
/// Returns the winner and, when it is TCP, why QUIC lost (its error, or
/// that it had not answered); the error names both failures.
pub async fn race<T, Q, F, TF>(quic: Q, tcp: F) -> Result<(T, Option<Lost>), String>
where
    Q: Future<Output = Result<T, Lost>>,
    F: FnOnce() -> TF,
    TF: Future<Output = Result<T, String>>,
{
    tokio::pin!(quic);
    tokio::select! {
        q = &mut quic => return match q {
            Ok(c) => Ok((c, None)),
            Err(qe) => tcp().await.map(|t| (t, Some(qe.clone()))).map_err(|te| format!("{qe}; {te}")),
        },
        _ = tokio::time::sleep(HEAD_START) => {}
    }
    let tcp = tcp();
    tokio::pin!(tcp);
    tokio::select! {
        q = &mut quic => match q {
            Ok(c) => Ok((c, None)),
            Err(qe) => tcp.await.map(|t| (t, Some(qe.clone()))).map_err(|te| format!("{qe}; {te}")),
        },
        t = &mut tcp => match t {
            Ok(t) => Ok((t, Some(Lost { kind: "no_answer", why: format!("no QUIC answer within {} ms", HEAD_START.as_millis()) }))),
            Err(te) => quic.await.map(|q| (q, None)).map_err(|qe| format!("{te}; {qe}")),
        },
    }
}

/// Whether `conn` is still usable.
pub fn alive(conn: &Connection) -> bool {
    conn.close_reason().is_none()
}

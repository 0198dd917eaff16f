//! The PROXY protocol, version 2 (binary), as HAProxy's `send-proxy-v2`
//! writes it: a load balancer in front of the hub or a relay's client port
//! tells who connected to it, so site rules, per-source limits and audit see
//! the real source instead of the balancer.
//!
//! Only sources in `proxy_protocol_from` may send it, and from them it is
//! required. A connection from anywhere else that starts with a PROXY header
//! (v2, or v1's `PROXY `) is a forgery: the caller refuses it by name
//! ([`FORGED`]). A TLS handshake never starts with either.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature: the first 12 bytes of every header.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Addresses and TLVs after the fixed 16 bytes: more is refused (HAProxy
/// sends 12 or 36 bytes of addresses plus a few TLVs).
const MAX_BODY: usize = 1024;

/// Refusal label: a PROXY header from a source not in `proxy_protocol_from`.
pub const FORGED: &str = "proxy_header_untrusted";

/// Whether a connection's first bytes are a PROXY header (v2 or v1), not TLS.
pub fn looks_like_header(first: &[u8]) -> bool {
    matches!(first.first(), Some(b'\r') | Some(b'P'))
}

/// The balancers allowed to speak the PROXY protocol; empty: none.
#[derive(Debug, Clone, Default)]
pub struct ProxyTrust(Vec<IpNet>);

impl ProxyTrust {
    pub fn new(nets: Vec<IpNet>) -> ProxyTrust {
        ProxyTrust(nets)
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`, so IPv4 rules match a dual-stack listener.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why a trusted balancer's connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY v2 header from a trusted balancer (is send-proxy-v2 set?)")]
    Missing,
    #[error("malformed PROXY v2 header: {0}")]
    Malformed(&'static str),
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

impl ProxyError {
    /// The refusal label for metrics and audit.
    pub fn label(&self) -> &'static str {
        match self {
            ProxyError::Missing => "proxy_header_missing",
            ProxyError::Malformed(_) | ProxyError::Io(_) => "proxy_header_bad",
        }
    }
}

/// Reads the header a trusted balancer sends first, and returns the address
/// of the client it speaks for (`peer` itself for a `LOCAL` header, which
/// HAProxy uses for its own health checks). The caller bounds it in time.
pub async fn read_header<S: AsyncRead + Unpin>(io: &mut S, peer: SocketAddr) -> Result<SocketAddr, ProxyError> {
    let mut fixed = [0u8; 16];
    io.read_exact(&mut fixed).await?;
    if fixed[..12] != SIGNATURE {
        return Err(ProxyError::Missing);
    }
    let (version, command, family) = (fixed[12] >> 4, fixed[12] & 0x0f, fixed[13]);
    if version != 2 {
        return Err(ProxyError::Malformed("version is not 2"));
    }
    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    if len > MAX_BODY {
        return Err(ProxyError::Malformed("longer than 1024 bytes"));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    match command {
        0 => return Ok(peer), // LOCAL: the balancer's own connection
        1 => {}
        _ => return Err(ProxyError::Malformed("unknown command")),
    }
    let addr = match family {
        0x11 if len >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            SocketAddr::new(ip.into(), u16::from_be_bytes([body[8], body[9]]))
        }
        0x21 if len >= 36 => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&body[..16]);
            SocketAddr::new(Ipv6Addr::from(ip).into(), u16::from_be_bytes([body[32], body[33]]))
        }
        0x11 | 0x21 => return Err(ProxyError::Malformed("address block too short")),
        0x00 => return Ok(peer), // UNSPEC: nothing to say about the source
        _ => return Err(ProxyError::Malformed("not a TCP address family")),
    };
    Ok(addr)
}

/// A v2 `PROXY` header for a TCP connection from `src` to `dst` (tests, and
/// anyone checking a balancer by hand).
pub fn header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = SIGNATURE.to_vec();
    h.push(0x21);
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            h.push(0x11);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
        }
        _ => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            h.push(0x21);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(src));
            h.extend_from_slice(&v6(dst));
        }
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.9:4000".parse().unwrap()
    }

    async fn read(bytes: &[u8]) -> Result<SocketAddr, ProxyError> {
        read_header(&mut &bytes[..], peer()).await
    }

    #[tokio::test]
    async fn headers_give_the_source_and_bad_ones_are_named() {
        let (src, dst) = ("198.51.100.7:51000".parse().unwrap(), "127.0.0.1:17443".parse().unwrap());
        let mut h = header(src, dst);
        h.extend_from_slice(b"\x16\x03\x01");
        let mut io = &h[..];
        assert_eq!(read_header(&mut io, peer()).await.unwrap(), src);
        assert_eq!(io, b"\x16\x03\x01", "the bytes after the header are left for TLS");
        let v6: SocketAddr = "[2001:db8::5]:443".parse().unwrap();
        assert_eq!(read(&header(v6, "[::1]:1".parse().unwrap())).await.unwrap(), v6);
        // LOCAL (health checks) and UNSPEC: the balancer itself.
        let mut local = SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(read(&local).await.unwrap(), peer());
        // Refusals, by name.
        assert_eq!(
            read(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\x00\x00\x00\x00").await.unwrap_err().label(),
            "proxy_header_missing"
        );
        assert_eq!(read(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").await.unwrap_err().label(), "proxy_header_missing");
        let mut long = SIGNATURE.to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(read(&long).await.unwrap_err().to_string(), "malformed PROXY v2 header: longer than 1024 bytes");
        let mut short = SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert_eq!(read(&short).await.unwrap_err().label(), "proxy_header_bad");
        let mut v1 = SIGNATURE.to_vec();
        v1.extend_from_slice(&[0x11, 0x11, 0, 0]);
        assert_eq!(read(&v1).await.unwrap_err().label(), "proxy_header_bad");
        assert_eq!(read(&h[..20]).await.unwrap_err().label(), "proxy_header_bad", "cut short");
    }

    #[test]
    fn trust_matches_mapped_addresses_and_headers_are_told_from_tls() {
        let t = ProxyTrust::new(vec!["127.0.0.9/32".parse().unwrap()]);
        assert!(t.trusts("127.0.0.9".parse().unwrap()));
        assert!(t.trusts("::ffff:127.0.0.9".parse().unwrap()));
        assert!(!t.trusts("127.0.0.1".parse().unwrap()));
        assert!(!ProxyTrust::default().trusts("127.0.0.9".parse().unwrap()));
        assert!(looks_like_header(&SIGNATURE) && looks_like_header(b"PROXY TCP4"));
        assert!(!looks_like_header(&[0x16, 3, 1]) && !looks_like_header(&[0, 0, 0, 9]));
    }
}

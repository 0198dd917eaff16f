//! Frames of every tether wire protocol: encode/decode, limits, versions.
//!
//! Every frame is `u32 length | u8 type | payload`, big-endian. The length
//! covers type and payload and is checked against [`MAX_FRAME`] before any
//! allocation. The first frame of every connection carries [`VERSION`].

mod frame;
mod frame_decode;
mod frame_type;
pub mod grant;
mod io;
mod reason;
pub mod repo;
pub mod stream;
pub mod twin;
pub mod wire;

pub use frame::{Frame, Outcome};

/// Whether a frame whose first five bytes (length, type) are `header` is a
/// data leg's `DataOpen` (the relay tells an agent's QUIC streams apart by it).
pub fn is_data_open(header: &[u8; 5]) -> bool {
    header[4] == frame_type::DATA_OPEN
}
pub use grant::{Grant, GrantError, GrantSigner, GrantVerifier, SignedGrant};
pub use io::{FrameIo, FrameIoError};
pub use reason::Reason;

use std::fmt;

/// Protocol version carried by the first frame of every connection.
pub const VERSION: u16 = 1;

/// How often a relay tells a client that negotiated it that its session
/// request still waits for the device ([`Frame::Waiting`]).
pub const WAITING_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest frame accepted on any connection, header excluded.
pub const MAX_FRAME: usize = 64 * 1024;

/// What went wrong while decoding bytes from a peer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    Oversize { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("frame truncated")]
    Truncated,
    #[error("{extra} trailing bytes after frame body")]
    Trailing { extra: usize },
    #[error("field of {len} bytes exceeds the limit of {max}")]
    FieldTooLong { len: usize, max: usize },
    #[error("string is not UTF-8")]
    BadUtf8,
    #[error("unknown value {value} for {field}")]
    BadValue { field: &'static str, value: u64 },
    #[error("protocol version {theirs} is not supported (this side speaks {ours})")]
    Version { theirs: u16, ours: u16 },
}

impl ProtoError {
    /// Short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ProtoError::Oversize { .. } => "oversize",
            ProtoError::Empty | ProtoError::Truncated | ProtoError::Trailing { .. } => "malformed",
            ProtoError::UnknownType(_) => "unknown_type",
            ProtoError::FieldTooLong { .. } | ProtoError::BadUtf8 | ProtoError::BadValue { .. } => "bad_field",
            ProtoError::Version { .. } => "version",
        }
    }

    /// The reason code sent to the peer for this error.
    pub fn reason(&self) -> Reason {
        match self {
            ProtoError::Version { .. } => Reason::VersionMismatch,
            ProtoError::Oversize { .. } => Reason::FrameTooLarge,
            _ => Reason::BadFrame,
        }
    }
}

/// A 128-bit random session identifier, printed as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// A fresh id from the system's secure random source.
    pub fn random() -> Self {
        SessionId(crate::random_bytes())
    }

    pub fn parse(s: &str) -> Option<Self> {
        let v = hex::decode(s.trim()).ok()?;
        Some(SessionId(v.try_into().ok()?))
    }
}

impl crate::util::replay::ReplayKey for SessionId {
    fn parse_key(s: &str) -> Option<Self> {
        SessionId::parse(s)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// What a leg's MAC proves: which side dialled it.
#[derive(Debug, Clone, Copy)]
pub enum LegSide {
    /// A client's join; a replacement leg names the connection it `resumes` (0: none).
    Client {
        resumes: u32,
    },
    Device,
    /// A session's control leg moving to another relay.
    Control,
}

/// HMAC-SHA-256 binding a leg to `(session, conn)` under a secret that only
/// travelled over an authenticated TLS channel (the session token for a
/// client's join, the one-time `Open` key for a device's data leg). The secret
/// itself never crosses a leg, which may be raw TCP.
pub fn leg_mac(key: &[u8; 32], side: LegSide, session: &SessionId, conn: u32) -> [u8; 32] {
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&k);
    ctx.update(match side {
        LegSide::Client { .. } => b"tether leg client",
        LegSide::Device => b"tether leg device",
        LegSide::Control => b"tether leg control",
    });
    ctx.update(&session.0);
    ctx.update(&conn.to_be_bytes());
    if let LegSide::Client { resumes } = side {
        ctx.update(&resumes.to_be_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Checks a leg MAC in constant time.
pub fn leg_mac_ok(key: &[u8; 32], side: LegSide, session: &SessionId, conn: u32, mac: &[u8; 32]) -> bool {
    crate::util::ct_eq(&leg_mac(key, side, session, conn), mac)
}

/// Checks the version a peer announced in its first frame.
pub fn check_version(theirs: u16) -> Result<(), ProtoError> {
    if theirs == VERSION { Ok(()) } else { Err(ProtoError::Version { theirs, ours: VERSION }) }
}

#[cfg(test)]
mod tests;

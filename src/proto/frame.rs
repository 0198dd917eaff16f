//! The frame enum: control channel, client legs and data-leg preambles.
use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::repo::RepoFrame;
use super::twin::Fact;
use super::wire::*;
use super::{MAX_FRAME, ProtoError, Reason, SessionId, SignedGrant};

/// An agent's answer to an access request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Refused,
}

/// Every frame of every tether connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// agent -> relay, first frame of a control channel.
    Hello {
        version: u16,
        device: String,
        agent_version: String,
        services: Vec<String>,
        /// The agent takes data legs as streams the relay opens on its QUIC
        /// connection (the relay's `Open` is then the stream's first frame).
        /// Encoded only when true, as a trailing byte: a TCP agent's hello is
        /// what it always was.
        streams: bool,
    },
    /// relay -> agent, answer to `Hello`. `raw_legs`: data legs may be raw TCP.
    Welcome {
        version: u16,
        relay: String,
        heartbeat_secs: u32,
        raw_legs: bool,
    },
    /// either way on a control channel; the relay echoes the agent's.
    Heartbeat {
        seq: u64,
    },
    /// agent -> relay: the head of the agent's audit chain, which the relay
    /// passes to the hub (anchoring). Sent on attach and with each heartbeat.
    AuditHead {
        seq: u64,
        hash: String,
        /// The device key's signature over `hash` (hex; see [`crate::audit::sign`]).
        sig: String,
    },
    /// relay -> agent: a specialist asks for `service` under `grant`.
    AccessRequest {
        grant: SignedGrant,
        service: String,
    },
    /// agent -> relay: the agent's decision on an access request.
    Decision {
        session: SessionId,
        outcome: Outcome,
        reason: Reason,
    },
    /// relay -> agent: dial a data leg for tunnelled connection `conn`,
    /// proving it with a MAC under this one-time `key`.
    Open {
        session: SessionId,
        conn: u32,
        key: [u8; 32],
        /// Non-zero: this leg replaces a broken one of connection `resumes`.
        resumes: u32,
        /// Dial the data leg to this relay of the pair (its twin holds the
        /// client leg); empty: to the relay sending this frame.
        via: String,
    },
    /// agent -> relay: the data leg for `conn` will not come.
    OpenFailed {
        session: SessionId,
        conn: u32,
        reason: Reason,
    },
    /// any direction: the session is over.
    SessionEnd {
        session: SessionId,
        reason: Reason,
        bytes_to_device: u64,
        bytes_to_client: u64,
    },
    /// any direction: a refusal with its reason; the sender closes next.
    Error {
        reason: Reason,
        message: String,
    },
    /// client -> relay, first frame of a session's control leg.
    ClientOpen {
        version: u16,
        grant: SignedGrant,
        service: String,
    },
    /// relay -> client: the device admitted the session. `token` keys the
    /// MACs of the session's joins; `raw_legs`: joins may be raw TCP;
    /// `twin_holds`: the twin has acknowledged the session (it can take over).
    SessionReady {
        session: SessionId,
        token: [u8; 32],
        raw_legs: bool,
        twin_holds: bool,
    },
    /// client -> relay, first frame of a tunnelled connection's leg;
    /// `mac` = [`super::leg_mac`] under the session token.
    ClientJoin {
        version: u16,
        session: SessionId,
        conn: u32,
        mac: [u8; 32],
        /// Non-zero: this leg replaces a broken one of connection `resumes`.
        resumes: u32,
    },
    /// client -> relay, first frame of a session's control leg moved to this
    /// relay (the previous one failed); `mac` under the session token.
    ClientResume {
        version: u16,
        session: SessionId,
        mac: [u8; 32],
    },
    /// agent -> relay, first frame of a data leg; `mac` under the `Open` key.
    DataOpen {
        version: u16,
        session: SessionId,
        conn: u32,
        mac: [u8; 32],
    },
    /// relay -> either leg: paired; raw bytes follow.
    Paired {
        session: SessionId,
        conn: u32,
    },
    /// agent -> relay: a connection resumed on a leg this relay handed over.
    Resumed {
        session: SessionId,
        conn: u32,
        pause_ms: u32,
        retransmitted: u64,
    },
    /// twin link, dialler -> listener, first frame: who is sending facts.
    TwinHello {
        version: u16,
        relay: String,
    },
    /// twin link: a full snapshot of the sender's facts follows, then `SnapshotEnd`.
    TwinSnapshot,
    TwinSnapshotEnd {
        seq: u64,
    },
    /// twin link: the sender holds a client leg for a device attached only to
    /// the receiver; the receiver relays it to the agent as `Open{via}`.
    TwinOpen {
        session: SessionId,
        conn: u32,
        key: [u8; 32],
        resumes: u32,
        via: String,
    },
    /// twin link: one fact, numbered.
    TwinFact {
        seq: u64,
        fact: Fact,
    },
    /// twin link, listener -> dialler: applied everything up to `seq`.
    TwinAck {
        seq: u64,
    },
    /// fetch legs: repository metadata and artifacts through the relay.
    Repo(RepoFrame),
}

use super::frame_type::*;

fn put_sid(b: &mut BytesMut, s: &SessionId) {
    b.put_slice(&s.0);
}

fn get_sid(b: &mut Bytes) -> Result<SessionId, ProtoError> {
    Ok(SessionId(get_array(b)?))
}

fn get_bool(b: &mut Bytes) -> Result<bool, ProtoError> {
    match get_u8(b)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(ProtoError::BadValue { field: "flag", value: v.into() }),
    }
}

fn get_reason(b: &mut Bytes) -> Result<Reason, ProtoError> {
    Ok(Reason::from_code(get_u16(b)?))
}

impl Frame {
    /// Appends the framed encoding (length prefix included) to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u32(0);
        match self {
            Frame::Hello { version, device, agent_version, services, streams } => {
                buf.put_u8(HELLO);
                buf.put_u16(*version);
                put_str(buf, device);
                put_str(buf, agent_version);
                put_list(buf, services);
                if *streams {
                    buf.put_u8(1);
                }
            }
            Frame::Welcome { version, relay, heartbeat_secs, raw_legs } => {
                buf.put_u8(WELCOME);
                buf.put_u16(*version);
                put_str(buf, relay);
                buf.put_u32(*heartbeat_secs);
                buf.put_u8(u8::from(*raw_legs));
            }
            Frame::Heartbeat { seq } => {
                buf.put_u8(HEARTBEAT);
                buf.put_u64(*seq);
            }
            Frame::AuditHead { seq, hash, sig } => {
                buf.put_u8(AUDIT_HEAD);
                buf.put_u64(*seq);
                put_str(buf, hash);
                put_str(buf, sig);
            }
            Frame::AccessRequest { grant, service } => {
                buf.put_u8(ACCESS_REQUEST);
                grant.encode(buf);
                put_str(buf, service);
            }
            Frame::Decision { session, outcome, reason } => {
                buf.put_u8(DECISION);
                put_sid(buf, session);
                buf.put_u8(match outcome {
                    Outcome::Allowed => 1,
                    Outcome::Refused => 2,
                });
                buf.put_u16(reason.code());
            }
            Frame::Open { session, conn, key, resumes, via } => {
                buf.put_u8(OPEN);
                put_sid(buf, session);
                buf.put_u32(*conn);
                buf.put_slice(key);
                buf.put_u32(*resumes);
                put_str(buf, via);
            }
            Frame::TwinOpen { session, conn, key, resumes, via } => {
                buf.put_u8(TWIN_OPEN);
                put_sid(buf, session);
                buf.put_u32(*conn);
                buf.put_slice(key);
                buf.put_u32(*resumes);
                put_str(buf, via);
            }
            Frame::OpenFailed { session, conn, reason } => {
                buf.put_u8(OPEN_FAILED);
                put_sid(buf, session);
                buf.put_u32(*conn);
                buf.put_u16(reason.code());
            }
            Frame::SessionEnd { session, reason, bytes_to_device, bytes_to_client } => {
                buf.put_u8(SESSION_END);
                put_sid(buf, session);
                buf.put_u16(reason.code());
                buf.put_u64(*bytes_to_device);
                buf.put_u64(*bytes_to_client);
            }
            Frame::Error { reason, message } => {
                buf.put_u8(ERROR);
                buf.put_u16(reason.code());
                put_str(buf, message);
            }
            Frame::ClientOpen { version, grant, service } => {
                buf.put_u8(CLIENT_OPEN);
                buf.put_u16(*version);
                grant.encode(buf);
                put_str(buf, service);
            }
            Frame::SessionReady { session, token, raw_legs, twin_holds } => {
                buf.put_u8(SESSION_READY);
                put_sid(buf, session);
                buf.put_slice(token);
                buf.put_u8(u8::from(*raw_legs));
                buf.put_u8(u8::from(*twin_holds));
            }
            Frame::ClientJoin { version, session, conn, mac, resumes } => {
                buf.put_u8(CLIENT_JOIN);
                buf.put_u16(*version);
                put_sid(buf, session);
                buf.put_u32(*conn);
                buf.put_slice(mac);
                buf.put_u32(*resumes);
            }
            Frame::ClientResume { version, session, mac } => {
                buf.put_u8(CLIENT_RESUME);
                buf.put_u16(*version);
                put_sid(buf, session);
                buf.put_slice(mac);
            }
            Frame::DataOpen { version, session, conn, mac } => {
                buf.put_u8(DATA_OPEN);
                buf.put_u16(*version);
                put_sid(buf, session);
                buf.put_u32(*conn);
                buf.put_slice(mac);
            }
            Frame::Paired { session, conn } => {
                buf.put_u8(PAIRED);
                put_sid(buf, session);
                buf.put_u32(*conn);
            }
            Frame::TwinHello { version, relay } => {
                buf.put_u8(TWIN_HELLO);
                buf.put_u16(*version);
                put_str(buf, relay);
            }
            Frame::TwinSnapshot => buf.put_u8(TWIN_SNAPSHOT),
            Frame::Resumed { session, conn, pause_ms, retransmitted } => {
                buf.put_u8(RESUMED);
                put_sid(buf, session);
                buf.put_u32(*conn);
                buf.put_u32(*pause_ms);
                buf.put_u64(*retransmitted);
            }
            Frame::TwinSnapshotEnd { seq } => {
                buf.put_u8(TWIN_SNAPSHOT_END);
                buf.put_u64(*seq);
            }
            Frame::TwinFact { seq, fact } => {
                buf.put_u8(TWIN_FACT);
                buf.put_u64(*seq);
                fact.encode(buf);
            }
            Frame::TwinAck { seq } => {
                buf.put_u8(TWIN_ACK);
                buf.put_u64(*seq);
            }
            Frame::Repo(r) => r.encode(buf),
        }
        let len = (buf.len() - start - 4) as u32;
        buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Takes one whole frame off the front of `buf`. `Ok(None)` means more
    /// bytes are needed; the length is checked before anything is allocated.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, ProtoError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(ProtoError::Oversize { len, max: MAX_FRAME });
        }
        if len == 0 {
            return Err(ProtoError::Empty);
        }
        // Each type has its own cap: a small frame claiming a large length is
        // refused on its fifth byte, before anything is allocated for it.
        if let Some(&ty) = buf.get(4)
            && len > max_len(ty)
        {
            return Err(ProtoError::Oversize { len, max: max_len(ty) });
        }
        if buf.len() < 4 + len {
            // Room grows with the bytes that actually arrive (the reader
            // reserves a few KiB at a time), never ahead of them.
            return Ok(None);
        }
        buf.advance(4);
        let mut body = buf.split_to(len).freeze();
        let frame = Frame::decode_body(&mut body)?;
        if body.has_remaining() {
            return Err(ProtoError::Trailing { extra: body.remaining() });
        }
        Ok(Some(frame))
    }

    fn decode_body(b: &mut Bytes) -> Result<Frame, ProtoError> {
        let ty = get_u8(b)?;
        Ok(match ty {
            HELLO => Frame::Hello {
                version: get_u16(b)?,
                device: get_str(b)?,
                agent_version: get_str(b)?,
                services: get_list(b)?,
                streams: b.has_remaining() && get_bool(b)?,
            },
            WELCOME => Frame::Welcome {
                version: get_u16(b)?,
                relay: get_str(b)?,
                heartbeat_secs: get_u32(b)?,
                raw_legs: get_bool(b)?,
            },
            HEARTBEAT => Frame::Heartbeat { seq: get_u64(b)? },
            AUDIT_HEAD => Frame::AuditHead { seq: get_u64(b)?, hash: get_str(b)?, sig: get_str(b)? },
            ACCESS_REQUEST => Frame::AccessRequest { grant: SignedGrant::decode(b)?, service: get_str(b)? },
            DECISION => Frame::Decision {
                session: get_sid(b)?,
                outcome: match get_u8(b)? {
                    1 => Outcome::Allowed,
                    2 => Outcome::Refused,
                    v => return Err(ProtoError::BadValue { field: "outcome", value: v.into() }),
                },
                reason: get_reason(b)?,
            },
            OPEN => Frame::Open {
                session: get_sid(b)?,
                conn: get_u32(b)?,
                key: get_array(b)?,
                resumes: get_u32(b)?,
                via: get_str(b)?,
            },
            TWIN_OPEN => Frame::TwinOpen {
                session: get_sid(b)?,
                conn: get_u32(b)?,
                key: get_array(b)?,
                resumes: get_u32(b)?,
                via: get_str(b)?,
            },
            OPEN_FAILED => Frame::OpenFailed { session: get_sid(b)?, conn: get_u32(b)?, reason: get_reason(b)? },
            SESSION_END => Frame::SessionEnd {
                session: get_sid(b)?,
                reason: get_reason(b)?,
                bytes_to_device: get_u64(b)?,
                bytes_to_client: get_u64(b)?,
            },
            ERROR => Frame::Error { reason: get_reason(b)?, message: get_str(b)? },
            CLIENT_OPEN => {
                Frame::ClientOpen { version: get_u16(b)?, grant: SignedGrant::decode(b)?, service: get_str(b)? }
            }
            SESSION_READY => Frame::SessionReady {
                session: get_sid(b)?,
                token: get_array(b)?,
                raw_legs: get_bool(b)?,
                twin_holds: get_bool(b)?,
            },
            CLIENT_JOIN => Frame::ClientJoin {
                version: get_u16(b)?,
                session: get_sid(b)?,
                conn: get_u32(b)?,
                mac: get_array(b)?,
                resumes: get_u32(b)?,
            },
            CLIENT_RESUME => Frame::ClientResume { version: get_u16(b)?, session: get_sid(b)?, mac: get_array(b)? },
            DATA_OPEN => {
                Frame::DataOpen { version: get_u16(b)?, session: get_sid(b)?, conn: get_u32(b)?, mac: get_array(b)? }
            }
            PAIRED => Frame::Paired { session: get_sid(b)?, conn: get_u32(b)? },
            TWIN_HELLO => Frame::TwinHello { version: get_u16(b)?, relay: get_str(b)? },
            TWIN_SNAPSHOT => Frame::TwinSnapshot,
            RESUMED => Frame::Resumed {
                session: get_sid(b)?,
                conn: get_u32(b)?,
                pause_ms: get_u32(b)?,
                retransmitted: get_u64(b)?,
            },
            TWIN_SNAPSHOT_END => Frame::TwinSnapshotEnd { seq: get_u64(b)? },
            TWIN_FACT => Frame::TwinFact { seq: get_u64(b)?, fact: Fact::decode(b)? },
            TWIN_ACK => Frame::TwinAck { seq: get_u64(b)? },
            REPO_GET | REPO_DATA | REPO_FAILED | JOBS_GET | JOB_REPORT | JOBS_WAITING | UPLOAD_PUT => {
                Frame::Repo(RepoFrame::decode(ty, b)?)
            }
            other => return Err(ProtoError::UnknownType(other)),
        })
    }

    /// Short name for logs (never the payload).
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "hello",
            Frame::Welcome { .. } => "welcome",
            Frame::Heartbeat { .. } => "heartbeat",
            Frame::AuditHead { .. } => "audit_head",
            Frame::AccessRequest { .. } => "access_request",
            Frame::Decision { .. } => "decision",
            Frame::Open { .. } => "open",
            Frame::OpenFailed { .. } => "open_failed",
            Frame::SessionEnd { .. } => "session_end",
            Frame::Error { .. } => "error",
            Frame::ClientOpen { .. } => "client_open",
            Frame::ClientResume { .. } => "client_resume",
            Frame::SessionReady { .. } => "session_ready",
            Frame::ClientJoin { .. } => "client_join",
            Frame::DataOpen { .. } => "data_open",
            Frame::Paired { .. } => "paired",
            Frame::TwinHello { .. } => "twin_hello",
            Frame::TwinSnapshot => "twin_snapshot",
            Frame::Resumed { .. } => "resumed",
            Frame::TwinSnapshotEnd { .. } => "twin_snapshot_end",
            Frame::TwinFact { .. } => "twin_fact",
            Frame::TwinAck { .. } => "twin_ack",
            Frame::TwinOpen { .. } => "twin_open",
            Frame::Repo(r) => r.kind(),
        }
    }

    /// A refusal frame with the reason's standard text.
    pub fn error(reason: Reason) -> Frame {
        Frame::Error { reason, message: reason.text().to_string() }
    }
}

//! The frame enum: control channel, client legs and data-leg preambles.
use bytes::{BufMut, Bytes, BytesMut};

use super::repo::RepoFrame;
use super::twin::Fact;
use super::wire::*;
use super::{Reason, SessionId, SignedGrant};

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
        /// The sender's wall clock (unix milliseconds), a trailing field sent
        /// only when known: an agent sends its own, and a relay answers a
        /// heartbeat that had one with its own, so each end learns how far
        /// the device's clock is off. Twin links and clients send none.
        clock: Option<u64>,
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
    /// relay -> client, while a session request waits for the device's
    /// decision: sent when the request reaches the device, then every
    /// [`super::WAITING_EVERY`]; `secs` since the request. Only to a client
    /// that negotiated ALPN `tether-client/2` (`tether-client-quic/2`): one
    /// that heard it knows the relay is alive while a person decides, and
    /// takes its silence for a frozen relay or a cut path.
    Waiting {
        secs: u32,
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

impl Frame {
    /// The framed encoding on its own (a frame written with other bytes).
    pub fn encoded(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf.freeze()
    }

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
            Frame::Heartbeat { seq, clock } => {
                buf.put_u8(HEARTBEAT);
                buf.put_u64(*seq);
                if let Some(c) = clock {
                    buf.put_u64(*c);
                }
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
            Frame::Waiting { secs } => {
                buf.put_u8(WAITING);
                buf.put_u32(*secs);
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
            Frame::Waiting { .. } => "waiting",
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

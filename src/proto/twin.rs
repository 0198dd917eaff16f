//! Facts replicated between twin relays over the twin link (17003).
//!
//! Each relay is the authority for what it admitted itself; it streams those
//! facts to its twin. Facts are idempotent (applying one twice changes
//! nothing), so a snapshot may overlap the stream that follows it.
use bytes::{BufMut, Bytes, BytesMut};

use super::wire::*;
use super::{ProtoError, Reason, SessionId};

/// A session as its admitting relay knows it: enough for the twin to pair
/// that session's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFact {
    pub session: SessionId,
    pub device: String,
    pub service: String,
    pub specialist: String,
    pub role: String,
    pub client: String,
    pub token: [u8; 32],
    /// Unix seconds at which it was admitted.
    pub started_at: u64,
}

/// One replicated change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    SessionUp(SessionFact),
    SessionDown {
        session: SessionId,
        reason: Reason,
    },
    /// A grant's session id was used (refused or admitted); kept until expiry.
    Consumed {
        session: SessionId,
        expires_at: u64,
    },
    Attached {
        device: String,
    },
    Detached {
        device: String,
    },
    /// The session's control leg is at this relay now (it moved here from
    /// the twin): the twin lets go of its old control leg without ending the session.
    ControlHere {
        session: SessionId,
    },
}

const UP: u8 = 1;
const DOWN: u8 = 2;
const CONSUMED: u8 = 3;
const ATTACHED: u8 = 4;
const DETACHED: u8 = 5;
const CONTROL_HERE: u8 = 6;

impl Fact {
    pub fn encode(&self, b: &mut BytesMut) {
        match self {
            Fact::SessionUp(s) => {
                b.put_u8(UP);
                b.put_slice(&s.session.0);
                put_str(b, &s.device);
                put_str(b, &s.service);
                put_str(b, &s.specialist);
                put_str(b, &s.role);
                put_str(b, &s.client);
                b.put_slice(&s.token);
                b.put_u64(s.started_at);
            }
            Fact::SessionDown { session, reason } => {
                b.put_u8(DOWN);
                b.put_slice(&session.0);
                b.put_u16(reason.code());
            }
            Fact::Consumed { session, expires_at } => {
                b.put_u8(CONSUMED);
                b.put_slice(&session.0);
                b.put_u64(*expires_at);
            }
            Fact::Attached { device } => {
                b.put_u8(ATTACHED);
                put_str(b, device);
            }
            Fact::Detached { device } => {
                b.put_u8(DETACHED);
                put_str(b, device);
            }
            Fact::ControlHere { session } => {
                b.put_u8(CONTROL_HERE);
                b.put_slice(&session.0);
            }
        }
    }

    pub fn decode(b: &mut Bytes) -> Result<Fact, ProtoError> {
        Ok(match get_u8(b)? {
            UP => Fact::SessionUp(SessionFact {
                session: SessionId(get_array(b)?),
                device: get_str(b)?,
                service: get_str(b)?,
                specialist: get_str(b)?,
                role: get_str(b)?,
                client: get_str(b)?,
                token: get_array(b)?,
                started_at: get_u64(b)?,
            }),
            DOWN => Fact::SessionDown { session: SessionId(get_array(b)?), reason: Reason::from_code(get_u16(b)?) },
            CONSUMED => Fact::Consumed { session: SessionId(get_array(b)?), expires_at: get_u64(b)? },
            ATTACHED => Fact::Attached { device: get_str(b)? },
            DETACHED => Fact::Detached { device: get_str(b)? },
            CONTROL_HERE => Fact::ControlHere { session: SessionId(get_array(b)?) },
            v => return Err(ProtoError::BadValue { field: "fact", value: v.into() }),
        })
    }
}

//! Reading frames off the wire: the length checks before any allocation,
//! then each type's fields. Every byte here comes from a peer not yet
//! trusted; `frame.rs` holds the frames and their encoding.
use bytes::{Buf, Bytes, BytesMut};

use super::frame::{Frame, Outcome};
use super::frame_type::*;
use super::repo::RepoFrame;
use super::twin::Fact;
use super::wire::*;
use super::{MAX_FRAME, ProtoError, Reason, SessionId, SignedGrant};

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
            HEARTBEAT => {
                Frame::Heartbeat { seq: get_u64(b)?, clock: if b.has_remaining() { Some(get_u64(b)?) } else { None } }
            }
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
            WAITING => Frame::Waiting { secs: get_u32(b)? },
            TWIN_FACT => Frame::TwinFact { seq: get_u64(b)?, fact: Fact::decode(b)? },
            TWIN_ACK => Frame::TwinAck { seq: get_u64(b)? },
            REPO_GET | REPO_DATA | REPO_FAILED | JOBS_GET | JOB_REPORT | JOBS_WAITING | UPLOAD_PUT | CERT_RENEW => {
                Frame::Repo(RepoFrame::decode(ty, b)?)
            }
            other => return Err(ProtoError::UnknownType(other)),
        })
    }
}

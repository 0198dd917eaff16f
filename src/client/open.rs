//! Opening a session: a grant, then each relay it names in turn until one
//! admits the session. A relay lost or gone silent after it took the
//! request may have used the grant up (its twin would refuse it as reused),
//! so the relays after it are asked with a new grant.
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::answer::{self, Progress};
use super::grant_source::{GrantSource, Obtained};
use super::links::Links;
use super::{ClientError, ClientSession, Profile, RelayEntry};
use crate::leg::Leg;
use crate::proto::{Frame, FrameIo, Reason, SessionId, VERSION};
use crate::stream::e2e;
use crate::stream::resumable::ResumeConfig;
use crate::tls;

/// What one relay made of the request.
enum Asked {
    /// `SessionReady`'s fields, and its control leg.
    Ready { session: SessionId, token: [u8; 32], raw_legs: bool, twin_holds: bool, io: Box<FrameIo<Leg>> },
    /// Ask the next relay: why (for the specialist, told only when the relay
    /// named no reason), the line for the final error, the reason, and
    /// whether the relay took the request (and so may have used the grant).
    Next { why: String, failure: String, reason: Option<Reason>, took: bool },
}

impl ClientSession {
    /// [`Self::open_with`], telling `progress` what the request waits for.
    pub async fn open_watching(
        profile: &Profile,
        source: &GrantSource,
        device: &str,
        service: &str,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Arc<ClientSession>, ClientError> {
        let key = e2e::ClientKey::generate()?;
        let e2e = e2e::client_config(&profile.ca, &key)?;
        tls::server_name(device)?;
        let mut obtained = source.obtain(device, service, key.public_key()).await?;
        let links = Links::new(&profile.ca, profile.transport)?;
        let (mut failures, mut last, mut gone) = (Vec::new(), None, Vec::<String>::new());
        // One new grant at most: a second relay lost with the request ends the attempt.
        for round in 0..2 {
            let relays: Vec<&RelayEntry> = obtained.relays.iter().filter(|r| !gone.contains(&r.name)).collect();
            let mut regrant = false;
            for (i, relay) in relays.iter().enumerate() {
                // A relay that could not be reached or gave no answer: the next is asked.
                let tell = |why: &str| {
                    if let Some(n) = relays.get(i + 1) {
                        let (failed, why, next) = (relay.name.clone(), why.to_string(), n.name.clone());
                        progress(Progress::Trying { failed, why, next });
                    }
                };
                match ask(&links, relay, &obtained, service, progress).await? {
                    Asked::Ready { session, token, raw_legs, twin_holds, io } => {
                        if !twin_holds && obtained.relays.len() > 1 {
                            tracing::warn!(%session, relay = %relay.name, "the twin does not hold this session yet: it cannot take over if {} fails", relay.name);
                        }
                        let s = Arc::new(ClientSession {
                            id: session,
                            relay: (*relay).clone(),
                            relays: obtained.relays.clone(),
                            current: Mutex::new((*relay).clone()),
                            device: device.to_string(),
                            e2e,
                            token,
                            raw_legs,
                            links,
                            next_conn: AtomicU32::new(1),
                            keyed: Default::default(),
                            resume: ResumeConfig {
                                cap: profile.resume_buffer_bytes.max(64 * 1024),
                                resume_deadline: Duration::from_secs(profile.resume_deadline_secs.max(1)),
                                ..ResumeConfig::default()
                            },
                            ended: CancellationToken::new(),
                            control_done: CancellationToken::new(),
                            end_reason: Mutex::new(None),
                            to_device: AtomicU64::new(0),
                            to_client: AtomicU64::new(0),
                        });
                        tokio::spawn(s.clone().control_leg(*io));
                        return Ok(s);
                    }
                    Asked::Next { why, failure, reason, took } => {
                        if reason.is_none() {
                            tell(&why);
                        }
                        failures.push(failure);
                        last = reason.or(last);
                        if took {
                            gone.push(relay.name.clone());
                            regrant = true;
                            break;
                        }
                    }
                }
            }
            if !regrant || round == 1 {
                break;
            }
            tracing::info!(relay = %gone.join(", "), "a new grant for the relays after one lost with the request");
            obtained = source.obtain(device, service, key.public_key()).await?;
        }
        Err(ClientError::NoRelay { detail: failures.join("; "), last })
    }
}

/// Asks `relay` to open the session with `obtained`'s grant.
async fn ask(
    links: &Links,
    relay: &RelayEntry,
    obtained: &Obtained,
    service: &str,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Asked, ClientError> {
    let conn = match links.leg(relay, false).await {
        Ok(c) => c,
        Err(source) => {
            let why = source.to_string();
            let failure = ClientError::Dial { relay: relay.name.clone(), addr: relay.addr.clone(), source }.to_string();
            return Ok(Asked::Next { why, failure, reason: None, took: false });
        }
    };
    let mut io = FrameIo::new(conn);
    let open = Frame::ClientOpen { version: VERSION, grant: obtained.grant.clone(), service: service.to_string() };
    if let Err(e) = io.write_frame(&open).await {
        let failure = format!("{}: {e}", relay.name);
        return Ok(Asked::Next { why: e.to_string(), failure, reason: None, took: false });
    }
    progress(Progress::Asked { relay: relay.name.clone(), consent: obtained.consent });
    Ok(match answer::read(&mut io, &relay.name, progress).await {
        Ok(Frame::SessionReady { session, token, raw_legs, twin_holds }) => {
            Asked::Ready { session, token, raw_legs, twin_holds, io: Box::new(io) }
        }
        // The twin may hold the device, or the other may be draining.
        Ok(Frame::Error {
            reason: reason @ (Reason::NotAttached | Reason::RelayShutdown | Reason::Overloaded),
            message,
        }) => {
            let failure = format!("{}: {reason}: {message}", relay.name);
            Asked::Next { why: message, failure, reason: Some(reason), took: false }
        }
        Ok(Frame::Error { reason, message }) => return Err(ClientError::Refused { reason, message }),
        Ok(other) => {
            let detail = format!("unexpected {}", other.kind());
            return Err(ClientError::Protocol { relay: relay.name.clone(), detail });
        }
        // Lost or silent after taking the request: it may have used the grant.
        Err(e) => {
            let failure = format!("{}: {e}", relay.name);
            Asked::Next { why: e.to_string(), failure, reason: None, took: true }
        }
    })
}

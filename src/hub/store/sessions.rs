//! Session records in the hub's database: granted, live (and on which
//! relay), ended or revoked.
use super::sql::Row;
use super::{Store, StoreError};
use crate::hub::model::SessionRecord;

const SESSION_COLUMNS: &str = "id, specialist, device, service, reason, ticket, source, relay, created_at, expires_at,
    consent_required, state, ended_at, end_reason, ended_by, bytes_to_device, bytes_to_client, duration_ms, transport";

fn session_from(r: &Row) -> SessionRecord {
    SessionRecord {
        id: r.text(0),
        specialist: r.text(1),
        device: r.text(2),
        service: r.text(3),
        reason: r.text(4),
        ticket: r.opt_text(5),
        source: r.text(6),
        relay: r.text(7),
        created_at: r.int(8),
        expires_at: r.int(9),
        consent_required: r.int(10) != 0,
        state: r.text(11),
        ended_at: r.opt_int(12),
        end_reason: r.opt_text(13),
        ended_by: r.opt_text(14),
        bytes_to_device: r.int(15),
        bytes_to_client: r.int(16),
        duration_ms: r.int(17),
        transport: r.text(18),
    }
}

/// How a relay came to report a session live ([`Store::session_live`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// The session started there.
    Started,
    /// Its control leg moved there from the twin.
    Moved,
}

/// The end of a session as a relay reported it.
#[derive(Debug, Clone, Default)]
pub struct SessionEnd {
    pub reason: String,
    pub ended_at: i64,
    pub bytes_to_device: i64,
    pub bytes_to_client: i64,
    pub duration_ms: i64,
}

impl Store {
    pub async fn session_add(&self, s: &SessionRecord) -> Result<(), StoreError> {
        self.insert(
            "session",
            &s.id,
            "INSERT INTO sessions (id, specialist, device, service, reason, ticket, source, relay, created_at, expires_at,
                consent_required, state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            vec![
                (&s.id).into(),
                (&s.specialist).into(),
                (&s.device).into(),
                (&s.service).into(),
                (&s.reason).into(),
                s.ticket.clone().into(),
                (&s.source).into(),
                (&s.relay).into(),
                s.created_at.into(),
                s.expires_at.into(),
                s.consent_required.into(),
                (&s.state).into(),
            ],
        )
        .await
    }

    pub async fn session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let rows =
            self.db.query(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"), vec![id.into()]).await?;
        Ok(rows.first().map(session_from))
    }

    /// The newest `limit` sessions of `specialist`, or of everyone.
    pub async fn sessions(&self, specialist: Option<&str>, limit: i64) -> Result<Vec<SessionRecord>, StoreError> {
        let rows = match specialist {
            Some(s) => {
                self.db
                    .query(
                        &format!(
                            "SELECT {SESSION_COLUMNS} FROM sessions WHERE specialist = $1 ORDER BY created_at DESC, id LIMIT $2"
                        ),
                        vec![s.into(), limit.into()],
                    )
                    .await?
            }
            None => {
                self.db
                    .query(
                        &format!("SELECT {SESSION_COLUMNS} FROM sessions ORDER BY created_at DESC, id LIMIT $1"),
                        vec![limit.into()],
                    )
                    .await?
            }
        };
        Ok(rows.iter().map(session_from).collect())
    }

    /// The newest `limit` sessions with `device` (of `specialist` only, when
    /// given), newest first.
    pub async fn device_sessions(
        &self,
        device: &str,
        specialist: Option<&str>,
        limit: i64,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE device = $1 AND (CAST($2 AS TEXT) = '' OR specialist = CAST($2 AS TEXT)) \
                     ORDER BY created_at DESC, id LIMIT $3"
                ),
                vec![device.into(), specialist.unwrap_or("").into(), limit.into()],
            )
            .await?;
        Ok(rows.iter().map(session_from).collect())
    }

    /// The device's sessions whose grant may still be used or whose bytes
    /// still flow (`granted` or `live`): (id, expires_at).
    pub async fn device_open_sessions(&self, device: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT id, expires_at FROM sessions WHERE device = $1 AND state IN ('granted', 'live') ORDER BY id",
                vec![device.into()],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.text(0), r.int(1))).collect())
    }

    /// A relay saw the session start, or its control leg arrive (a move to
    /// the twin): the record names that relay and the leg's transport. A
    /// start counts only for a session not yet live: reported late, after
    /// the session moved, it must not name the relay it left. A move also
    /// brings back a session recorded lost (its client resumed it late).
    pub async fn session_live(&self, id: &str, relay: &str, transport: &str, how: Live) -> Result<(), StoreError> {
        let states = match how {
            Live::Started => "state = 'granted'",
            Live::Moved => "(state IN ('granted', 'live') OR (state = 'ended' AND end_reason = 'lost'))",
        };
        self.db
            .exec(
                &format!(
                    "UPDATE sessions SET state = 'live', relay = $3, transport = $2, ended_at = NULL, end_reason = NULL
                     WHERE id = $1 AND {states}"
                ),
                vec![id.into(), transport.into(), relay.into()],
            )
            .await
            .map(|_| ())
    }

    /// Revoked at the hub: the relays close it; the record keeps who did it
    /// and why (`revoked`: an admin ended it; `device_retired`).
    pub async fn session_revoke(&self, id: &str, (by, why): (&str, &str), now: i64) -> Result<bool, StoreError> {
        let n = self
            .db
            .exec(
                "UPDATE sessions SET state = 'revoked', ended_by = $2, ended_at = $3, end_reason = $4
                 WHERE id = $1 AND state IN ('granted', 'live')",
                vec![id.into(), by.into(), now.into(), why.into()],
            )
            .await?;
        Ok(n == 1)
    }

    /// Sessions an admin revoked whose revocation must still reach the relays
    /// at `now`: (id, until), kept until the grant's expiry and at least
    /// `keep` seconds after the revocation (as [`super::relays::Board::revoke`]).
    pub async fn revocations_live(&self, now: i64, keep: i64) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT id, expires_at, ended_at FROM sessions
                 WHERE state = 'revoked' AND (expires_at > $1 OR ended_at > $2)",
                vec![now.into(), (now - keep).into()],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.text(0), r.int(1).max(r.int(2) + keep) as u64)).collect())
    }

    /// A relay's end report. Byte counts add up (a session may have legs at
    /// both twins); the first end reason and time stay, but a relay's word
    /// replaces the hub's guess that the session was lost.
    pub async fn session_end(&self, id: &str, end: &SessionEnd) -> Result<(), StoreError> {
        self.db
            .exec(
                "UPDATE sessions SET
                    state = CASE WHEN state = 'revoked' THEN 'revoked' ELSE 'ended' END,
                    ended_at = CASE WHEN end_reason = 'lost' THEN $2 ELSE COALESCE(ended_at, $2) END,
                    end_reason = CASE WHEN end_reason = 'lost' THEN $3 ELSE COALESCE(end_reason, $3) END,
                    bytes_to_device = bytes_to_device + $4, bytes_to_client = bytes_to_client + $5,
                    duration_ms = CASE WHEN duration_ms > $6 THEN duration_ms ELSE $6 END
                 WHERE id = $1",
                vec![
                    id.into(),
                    end.ended_at.into(),
                    end.reason.as_str().into(),
                    end.bytes_to_device.into(),
                    end.bytes_to_client.into(),
                    end.duration_ms.into(),
                ],
            )
            .await
            .map(|_| ())
    }

    /// The live sessions (the hub's check for sessions no relay holds).
    pub async fn sessions_live(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let rows =
            self.db.query(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE state = 'live'"), vec![]).await?;
        Ok(rows.iter().map(session_from).collect())
    }

    /// No relay holds the live session any more: ended at `ended_at`, reason
    /// `lost`, with what relays had counted for it while live. False when it
    /// was no longer live.
    pub async fn session_lost(&self, id: &str, ended_at: i64, bytes: (i64, i64)) -> Result<bool, StoreError> {
        let n = self
            .db
            .exec(
                "UPDATE sessions SET state = 'ended', ended_at = $2, end_reason = 'lost',
                    bytes_to_device = bytes_to_device + $3, bytes_to_client = bytes_to_client + $4
                 WHERE id = $1 AND state = 'live'",
                vec![id.into(), ended_at.into(), bytes.0.into(), bytes.1.into()],
            )
            .await?;
        Ok(n == 1)
    }

    /// A session recorded lost is live after all: the counts it took then
    /// come back out (the relay that lists it counts them again).
    pub async fn session_found(&self, id: &str, bytes: (i64, i64)) -> Result<bool, StoreError> {
        let n = self
            .db
            .exec(
                "UPDATE sessions SET state = 'live', ended_at = NULL, end_reason = NULL,
                    bytes_to_device = bytes_to_device - $2, bytes_to_client = bytes_to_client - $3
                 WHERE id = $1 AND state = 'ended' AND end_reason = 'lost'",
                vec![id.into(), bytes.0.into(), bytes.1.into()],
            )
            .await?;
        Ok(n == 1)
    }

    /// Adds bytes to a session's counts without ending it (what a relay
    /// carried before it restarted).
    pub async fn session_add_bytes(&self, id: &str, to_device: i64, to_client: i64) -> Result<(), StoreError> {
        self.db
            .exec(
                "UPDATE sessions SET bytes_to_device = bytes_to_device + $2, bytes_to_client = bytes_to_client + $3
                 WHERE id = $1",
                vec![id.into(), to_device.into(), to_client.into()],
            )
            .await
            .map(|_| ())
    }
}

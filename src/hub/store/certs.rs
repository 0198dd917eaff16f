//! Device certificates: when each device's certificate expires (as its
//! relays last saw it), and its renewal: the request, the certificate the
//! CA's holder signed for it, and whether the device presents it yet.
use std::collections::HashMap;

use super::{Store, StoreError};

/// One device's row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceCert {
    pub device: String,
    /// When the certificate a relay last saw expires (0: never seen).
    pub not_after: u64,
    pub csr: String,
    pub requested_at: u64,
    /// The issued certificate (PEM; empty while pending).
    pub cert: String,
    pub issued_not_after: u64,
}

impl DeviceCert {
    /// `pending`, `issued` or `installed`; none without a request.
    pub fn renewal(&self) -> Option<&'static str> {
        match (self.csr.is_empty(), self.cert.is_empty()) {
            (true, _) => None,
            (false, true) => Some("pending"),
            (false, false) if self.not_after == self.issued_not_after => Some("installed"),
            (false, false) => Some("issued"),
        }
    }
}

const COLUMNS: &str = "device, not_after, csr, requested_at, cert, issued_not_after";

fn row(r: &super::sql::Row) -> DeviceCert {
    DeviceCert {
        device: r.text(0),
        not_after: r.int(1) as u64,
        csr: r.text(2),
        requested_at: r.int(3) as u64,
        cert: r.text(4),
        issued_not_after: r.int(5) as u64,
    }
}

impl Store {
    /// A relay saw `device` attach with a certificate expiring at `not_after`
    /// (nothing is kept for a device the hub does not know).
    pub async fn cert_seen(&self, device: &str, not_after: u64, now: u64) -> Result<(), StoreError> {
        self.db
            .exec(
                "INSERT INTO device_certs (device, not_after, seen_at)
                 SELECT CAST($1 AS TEXT), CAST($2 AS BIGINT), CAST($3 AS BIGINT)
                 WHERE EXISTS (SELECT 1 FROM devices WHERE id = $1)
                 ON CONFLICT (device) DO UPDATE SET not_after = $2, seen_at = $3",
                vec![device.into(), not_after.into(), now.into()],
            )
            .await
            .map(|_| ())
    }

    /// Records `device`'s request; a request other than the one on record
    /// replaces it and whatever was issued for it.
    pub async fn cert_request(&self, device: &str, csr: &str, now: u64) -> Result<DeviceCert, StoreError> {
        self.db
            .exec(
                "INSERT INTO device_certs (device, csr, requested_at) VALUES ($1, $2, $3)
                 ON CONFLICT (device) DO UPDATE SET csr = $2, requested_at = $3, cert = '', issued_not_after = 0,
                 issued_by = '', issued_at = 0 WHERE device_certs.csr <> $2",
                vec![device.into(), csr.into(), now.into()],
            )
            .await?;
        Ok(self.cert_of(device).await?.unwrap_or_default())
    }

    pub async fn cert_of(&self, device: &str) -> Result<Option<DeviceCert>, StoreError> {
        let q = format!("SELECT {COLUMNS} FROM device_certs WHERE device = $1");
        Ok(self.db.query(&q, vec![device.into()]).await?.first().map(row))
    }

    /// Every device's row, by device.
    pub async fn certs(&self) -> Result<HashMap<String, DeviceCert>, StoreError> {
        let rows = self.db.query(&format!("SELECT {COLUMNS} FROM device_certs"), vec![]).await?;
        Ok(rows.iter().map(row).map(|c| (c.device.clone(), c)).collect())
    }

    /// Keeps the certificate issued for `device`'s request `csr` (only if
    /// that request is still the one on record); false otherwise.
    pub async fn cert_issue(
        &self,
        device: &str,
        csr: &str,
        (cert, not_after): (&str, u64),
        by: &str,
        now: u64,
    ) -> Result<bool, StoreError> {
        let n = self
            .db
            .exec(
                "UPDATE device_certs SET cert = $3, issued_not_after = $4, issued_by = $5, issued_at = $6
                 WHERE device = $1 AND csr = $2",
                vec![device.into(), csr.into(), cert.into(), not_after.into(), by.into(), now.into()],
            )
            .await?;
        Ok(n > 0)
    }

    /// Devices whose certificate expires before `before` (expired ones
    /// included), and requests waiting for a signature.
    pub async fn cert_counts(&self, before: u64) -> Result<(u64, u64), StoreError> {
        let rows = self
            .db
            .query(
                "SELECT (SELECT COUNT(*) FROM device_certs WHERE not_after > 0 AND not_after < $1),
                 (SELECT COUNT(*) FROM device_certs WHERE csr <> '' AND cert = '')",
                vec![before.into()],
            )
            .await?;
        let n = |i: usize| rows.first().map_or(0, |r| r.int(i) as u64);
        Ok((n(0), n(1)))
    }
}

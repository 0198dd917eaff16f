//! What the hub stores: roles, accounts, sites, devices, session records.
use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use serde::Serialize;

/// A specialist's role. Ordered: each role can do what the ones before can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Diagnostic services only.
    Viewer,
    /// Every service of entitled devices.
    Engineer,
    /// Accounts, devices, ending sessions, audit; every device.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Engineer => "engineer",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "engineer" => Ok(Role::Engineer),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (viewer, engineer, admin)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub password_hash: String,
    /// Base32 TOTP secret.
    pub totp_secret: String,
    pub disabled: bool,
    pub created_at: i64,
}

/// A customer site (a hospital); devices belong to one.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Site {
    pub name: String,
    /// Where specialists may connect from; empty: anywhere.
    pub allow_from: Vec<IpNet>,
    /// Sessions need a change-ticket reference.
    pub require_ticket: bool,
}

impl Site {
    pub fn allow_from_text(&self) -> String {
        self.allow_from.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }

    pub fn parse_allow_from(text: &str) -> Result<Vec<IpNet>, String> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{s:?} is not a CIDR block"))
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub id: String,
    pub site: String,
    /// `auto` or `required`: the hub's policy (the agent may be stricter).
    pub consent: String,
}

/// One session as the hub records it, from grant to end.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: String,
    pub specialist: String,
    pub device: String,
    pub service: String,
    pub reason: String,
    pub ticket: Option<String>,
    /// The specialist's address as the hub saw it.
    pub source: String,
    /// Relay the hub routed to.
    pub relay: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub consent_required: bool,
    /// `granted`, `live`, `ended`, `revoked`.
    pub state: String,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
    pub ended_by: Option<String>,
    pub bytes_to_device: i64,
    pub bytes_to_client: i64,
    pub duration_ms: i64,
}

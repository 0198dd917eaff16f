//! What the hub stores: roles, accounts, sites, devices, session records.
use ipnet::IpNet;
use serde::Serialize;

pub use crate::api::{Role, SessionRecord};

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub id: String,
    pub site: String,
    /// `auto` or `required`: the hub's policy (the agent may be stricter).
    pub consent: String,
    /// Out of service for good (sold, scrapped, moved to another vendor's
    /// care): nobody reaches it, it takes no job, its certificate is not
    /// renewed. `None` while in service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retired: Option<Retired>,
}

impl Device {
    /// A device in service.
    pub fn new(id: &str, site: &str, consent: &str) -> Device {
        Device { id: id.into(), site: site.into(), consent: consent.into(), retired: None }
    }
}

/// When, by whom and why a device was retired (the API's view is the record).
pub type Retired = crate::api::RetiredView;

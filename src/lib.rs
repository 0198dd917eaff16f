//! tether: remote-service connectivity for fleets of medical devices.
//!
//! A specialist reaches a device's local service through a relay; the device's
//! agent only ever dials out. The modules, by role:
//!
//! - [`proto`]: frames of every wire protocol, grants, limits, versions.
//! - [`tls`]: rustls configs built once, PEM/CRL loading, ALPN, dev PKI.
//! - [`relay`]: listeners, pairing by session id, splicing, admin endpoints.
//! - [`agent`]: control channels to both relays, grant checks, consent, data legs.
//! - [`client`]: `tether connect`: grant, session, local listener.
//! - [`hub`]: accounts, two factors, entitlements, grants, session records, audit.
//! - [`api`]: the hub's typed API and report types and [`api::HubClient`]: what roles share with the hub.
//! - [`totp`]: RFC 6238 codes and enrolment URIs.
//! - [`util`]: the clock, random bytes, back-off, replay set, constant-time compare.
//! - [`dev`]: `tether dev`: a whole local system on dev certificates.
//! - [`twin`]: replication of session state between twin relays.
//! - [`audit`]: append-only, hash-chained JSON-lines audit log.
//! - [`leg`]: leg transports (TLS, or raw TCP with an authenticated preamble).
//! - [`splice`]: moving bytes both ways between two streams.
//! - [`stream`]: end-to-end TLS between client and agent inside a tunnel.
//! - [`metrics`]: the one Prometheus registry.
//! - [`config`]: TOML loading and validation shared by every role.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod audit;
pub mod cli;
pub mod client;
pub mod config;
pub mod dev;
pub mod hub;
pub mod leg;
pub mod loadgen;
pub mod metrics;
pub mod proto;
pub mod quic;
pub mod relay;
pub mod repo;
pub mod splice;
pub mod stream;
pub mod tls;
pub mod totp;
pub mod twin;
pub mod util;

pub use util::{now_rfc3339, random_bytes};

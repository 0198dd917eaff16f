//! TLS for every tether connection: rustls configs built once, PEM files,
//! CRLs, ALPN names, peer identities, and handshake-failure labels.
//!
//! Every listener speaks TLS 1.3 only and requires its ALPN name.

mod config;
mod dial;
pub mod expiry;
mod grant_keys;
pub mod own;
pub mod pki;
mod quic;
pub mod renewal;
mod sessions;
mod trust;

pub use config::*;
pub use dial::{DIAL_TIMEOUT, dial};
pub use grant_keys::{load_grant_verifier, read_grant_keys};
pub use quic::{ALPN_QUIC_AGENT, ALPN_QUIC_CLIENT, ALPN_QUIC_CLIENT_WAITS, quic_client_config, quic_server_config};
pub use sessions::{ClientSessions, ServerSessions};
pub use trust::Revoked;
pub use trust::{
    CRL_RELOAD_PERIOD, Role, Trust, WRONG_ROLE_MARK, WrongRole, catch_sighup, reload_all, roles_of, serial_of,
    spawn_reloader, watch_peer,
};

use std::path::PathBuf;

/// Why TLS material could not be loaded or a config built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no {what}")]
    Missing { path: PathBuf, what: &'static str },
    #[error("{path}: {what} is not valid PEM")]
    BadPem { path: PathBuf, what: &'static str },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("grant key: {0}")]
    GrantKey(String),
    #[error("{0}")]
    Identity(String),
}

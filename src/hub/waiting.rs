//! What the hub answers while it waits for its database at start (PostgreSQL
//! still starting after a power cut, a failover, the network): it listens
//! from the start, so that a port already taken fails the start at once and
//! everyone asking is told why, as a hub whose database went away later
//! tells them. `/metrics` (to `metrics_from`) shows `tether_hub_database_up
//! 0`, `/api/v1/healthz` answers 503 with the database `unreachable`, every
//! other request 503 `database_unavailable`, the console a page saying so.
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::HubConfig;
use super::guard::DATABASE_UNAVAILABLE;
use super::http::{Answer, ApiError, Peer, error_answer};
use crate::api::Route;

/// What every request but health and metrics is told.
pub const WAITING_TEXT: &str = "the hub is starting and waits for its database, which does not answer yet; sessions already open go on; try again in a minute";

pub fn answer(cfg: &HubConfig, req: &Request<Incoming>, peer: &Peer) -> Answer {
    let path = req.uri().path();
    let waiting = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, DATABASE_UNAVAILABLE, WAITING_TEXT);
    if super::console::is_console(path) {
        return super::console::refusal_page(&waiting);
    }
    match Route::of(req.method().as_str(), path) {
        Some(Route::Health) => super::api::health_answer(super::store::engine_of(&cfg.database), false, vec![]),
        Some(Route::Metrics) => match super::guard::metrics_allowed(cfg, peer) {
            Ok(()) => super::api::metrics_answer(),
            // Counted; the audit needs the database (the running hub writes it).
            Err(e) => {
                crate::metrics::HUB_REFUSALS.with_label_values(&[e.code]).inc();
                error_answer(&e)
            }
        },
        _ => error_answer(&waiting),
    }
}

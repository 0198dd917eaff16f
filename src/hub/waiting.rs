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
use super::http::{Answer, ApiError, Peer, error_answer, json_answer, text_answer};
use crate::api::{Health, Route};

/// What every request but health and metrics is told.
pub const WAITING_TEXT: &str = "the hub is starting and waits for its database, which does not answer yet; sessions already open go on; try again in a minute";

pub fn answer(cfg: &HubConfig, req: &Request<Incoming>, peer: &Peer) -> Answer {
    let path = req.uri().path();
    let waiting = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, DATABASE_UNAVAILABLE, WAITING_TEXT);
    if super::console::is_console(path) {
        return super::console::refusal_page(&waiting);
    }
    match Route::of(req.method().as_str(), path) {
        Some(Route::Health) => {
            let h = Health {
                status: "degraded".into(),
                engine: super::store::engine_of(&cfg.database).into(),
                database: "unreachable".into(),
                relays: vec![],
            };
            json_answer(StatusCode::SERVICE_UNAVAILABLE, &h)
        }
        Some(Route::Metrics) => {
            let from = peer.addr.ip().to_canonical();
            if cfg.metrics_from.iter().any(|n| n.contains(&from)) {
                return text_answer(StatusCode::OK, "text/plain; version=0.0.4", crate::metrics::render());
            }
            // Counted; the audit needs the database (the running hub writes it).
            crate::metrics::HUB_REFUSALS.with_label_values(&["metrics_not_allowed"]).inc();
            let why = "this address may not read the hub's metrics (the hub's metrics_from)";
            error_answer(&ApiError::new(StatusCode::FORBIDDEN, "metrics_not_allowed", why))
        }
        _ => error_answer(&waiting),
    }
}

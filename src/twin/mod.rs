//! Twin relays: replication of session state over the twin link (17003).
//!
//! Each relay is the authority for what it admitted itself and streams those
//! facts to its twin; the twin keeps them as a [`PeerView`]. The logic here has
//! no I/O ([`PeerView`], [`Outbox`]); [`link`] moves frames. The relay sees
//! only the narrow interface: it owns a [`Replica`] and implements
//! [`TwinHost`]; this module does not know the relay.
//!
//! While the link is down both twins keep serving what they hold; when it
//! heals, each sends a fresh snapshot, so the views converge.

pub mod link;
mod replica;
mod view;

pub use replica::{LinkConfig, Replica, TwinConfig, TwinHost};
pub use view::{Outbox, PeerView};

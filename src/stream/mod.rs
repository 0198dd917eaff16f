//! What runs inside a tunnelled connection, end to end between client and agent.
//!
//! - [`e2e`]: TLS 1.3 between the specialist's client and the device's agent,
//!   inside the spliced stream. The agent proves the device key (its fleet
//!   certificate); the client proves the key the grant names. A relay carries
//!   ciphertext it can neither read nor alter undetected.
//! - [`derived`]: a session's later connections skip the handshake: keys
//!   derived from its first end-to-end TLS connection; [`sealed`] is their
//!   record layer.
//! - [`resume`]: the resumable stream's sequence/ack bookkeeping (no I/O).
//! - [`blocks`]: receive blocks sized to the traffic (bulk or interactive).
//! - [`pipe`]: the application's end of a resumable stream and its driver's,
//!   handing chunks over without a second copy.
//! - [`Prefixed`]: a stream that first yields bytes read past a preamble.

mod blocks;
pub mod derived;
pub mod e2e;
pub mod pipe;
pub mod prefixed;
pub mod resumable;
pub mod resume;
pub mod sealed;

pub use prefixed::Prefixed;

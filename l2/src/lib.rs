//! The Redis tier of cache-manager (L2): what is stored ([`envelope`]), when Redis is
//! skipped ([`breaker`]), the client that talks to it from its own I/O thread
//! ([`client`]), and the coherence events instances exchange over pub/sub ([`events`]).

pub mod breaker;
pub mod client;
pub mod envelope;
pub mod events;

pub use breaker::Breaker;
pub use client::{Incoming, L2Config, L2Error, L2Stats, Publisher, L2};
pub use envelope::Envelope;
pub use events::{Action, Event, Key, Sequencer, Verdict};

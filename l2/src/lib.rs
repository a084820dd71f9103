//! The Redis tier of cache-manager (L2): what is stored ([`envelope`]), when Redis is
//! skipped ([`breaker`]), the client that talks to it from its own I/O thread
//! ([`client`]), the coherence events instances exchange over pub/sub ([`events`]), and
//! the write versions that order one key's writes everywhere ([`version`]).

pub mod breaker;
pub mod client;
pub mod envelope;
pub mod events;
pub mod version;

pub use breaker::Breaker;
pub use client::{Incoming, L2Config, L2Error, L2Stats, Publisher, Written, L2};
pub use envelope::{Envelope, Stored};
pub use events::{Action, Event, Key, Sequencer, Verdict};
pub use version::{Version, VersionClock};

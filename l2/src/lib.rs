//! The Redis tier of cache-manager (L2): what is stored ([`envelope`]), when Redis is
//! skipped ([`breaker`]), the client that talks to it from its own I/O thread
//! ([`client`]), the coherence events instances exchange ([`events`]) over pub/sub ([`pubsub`]), the
//! write versions that order one key's writes everywhere ([`version`]), and the script
//! that makes Redis keep the newest of them ([`keep_newer`]).

pub mod breaker;
pub mod client;
pub mod envelope;
pub mod events;
pub mod keep_newer;
pub mod outbox;
pub mod pubsub;
pub mod streams;
mod tracking;
pub mod version;

pub use breaker::Breaker;
pub use client::{L2Config, L2Error, L2Stats, L2};
pub use envelope::{Envelope, Stored};
pub use events::{Action, Event, Key, Sequencer, Verdict};
pub use keep_newer::Written;
pub use outbox::OutboxStats;
pub use pubsub::{Incoming, Publisher};
pub use streams::Streams;
pub use version::{Version, VersionClock};

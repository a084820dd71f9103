//! The Redis tier of cache-manager (L2): what is stored ([`envelope`]), when Redis is
//! skipped ([`breaker`]), the client that talks to it from its own I/O thread
//! ([`client`]), the coherence events instances exchange ([`events`]) over pub/sub
//! ([`pubsub`] publishes, `subscribe` follows, on the channels of [`streams`], queued
//! in an [`outbox`]) or learn from Redis's client tracking, the write versions that
//! order one key's writes everywhere ([`version`]), and the script that makes Redis keep
//! the newest of them ([`keep_newer`]).

pub mod breaker;
pub mod client;
pub mod envelope;
pub mod error;
pub mod events;
pub mod keep_newer;
mod nodes;
pub mod outbox;
pub mod pubsub;
pub mod streams;
mod subscribe;
mod tracking;
pub mod version;

pub use breaker::Breaker;
pub use client::{L2Config, L2Stats, L2};
pub use envelope::{Envelope, Stored};
pub use error::L2Error;
pub use events::{Action, Event, Incoming, Key, Sequencer, Verdict};
pub use keep_newer::Written;
pub use outbox::OutboxStats;
pub use pubsub::Publisher;
pub use streams::Streams;
pub use version::{Version, VersionClock};

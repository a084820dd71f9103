//! What can go wrong with the Redis tier, as one error type every module returns.

use std::time::Duration;

use crate::envelope::DecodeError;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum L2Error {
    #[error("Redis is being skipped: the circuit breaker opened after repeated failures")]
    Open,
    #[error("Redis did not answer within {0:?} (REDIS_TIMEOUT_MS)")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(String),
    #[error("the value stored in Redis is unreadable: {0}")]
    Decode(#[from] DecodeError),
    #[error("invalid Redis configuration: {0}")]
    Config(String),
    #[error("the L2 I/O thread has stopped")]
    Stopped,
}

impl From<redis::RedisError> for L2Error {
    fn from(e: redis::RedisError) -> Self {
        if e.is_timeout() {
            L2Error::Timeout(Duration::ZERO)
        } else {
            L2Error::Redis(e.to_string())
        }
    }
}

impl L2Error {
    /// Whether this failure says something about Redis's health (and counts for the
    /// breaker), as opposed to one stored value being bad.
    pub(crate) fn is_redis_failure(&self) -> bool {
        !matches!(self, L2Error::Decode(_))
    }
}

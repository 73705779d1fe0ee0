//! Small pieces of shared state the service must not forget: which parts of an egress event
//! were sent (the send ledger), which recipients opted out, and similar. Kept behind
//! [`StateStore`], a key-value store with expiry, so one instance can keep them in a journal
//! under `OUTBOX_DIR` ([`file::FileStore`]) and several instances can share them elsewhere.
//!
//! Values are short strings (callers store JSON); keys are namespaced by their callers
//! (`ledger:…`, `optout:…`). With `REDIS_URL` every instance shares [`redis::RedisStore`],
//! which also paces senders across instances ([`RateSlots`]).

pub mod file;
pub mod memory;
pub mod redis;

use std::time::Duration;

use futures_util::future::BoxFuture;

/// Why the store could not answer. Callers decide what is safe without it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store I/O failed: {0}")]
    Io(String),
    #[error("state store entry is unreadable: {0}")]
    Corrupt(String),
    #[error("state store unreachable: {0}")]
    Unavailable(String),
    #[error("state store busy: {0}")]
    Busy(String),
}

/// A key-value store whose entries expire.
pub trait StateStore: Send + Sync + 'static {
    /// The value of `key`, unless it is missing or expired.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>>;

    /// Sets `key` to `value` for `ttl`.
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Sets `key` only when it is missing or expired; `true` when this call set it.
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Where the entries live, for the debug snapshot (`file`, `memory`, …).
    fn kind(&self) -> &'static str;

    /// Whether other instances see these entries (and may write them concurrently).
    fn is_shared(&self) -> bool {
        false
    }
}

/// Send slots of a rate that every instance shares: a GCRA whose state and clock are the
/// store's, so N instances together keep one sender's rate.
pub trait RateSlots: Send + Sync + 'static {
    /// Reserves the next slot of `key`, one per `interval`, at most `tolerance` ahead of
    /// schedule; returns how long the caller must wait for it.
    fn reserve<'a>(
        &'a self,
        key: &'a str,
        interval: Duration,
        tolerance: Duration,
    ) -> BoxFuture<'a, Result<Duration, StoreError>>;
}

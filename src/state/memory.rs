//! A [`StateStore`] in process memory, bounded: at most `capacity` entries, each expiring on
//! its own time; when it is full the oldest writes go first (for a dedupe window, the ids
//! least likely to come again). Nothing survives a restart.
//!
//! The entries are spread over shards, each an insertion-ordered map behind its own lock: a
//! webhook's dedupe check is one short critical section, with no background bookkeeping.

use std::{
    hash::{BuildHasher, RandomState},
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use futures_util::future::BoxFuture;
use hashlink::LinkedHashMap;

use super::{StateStore, StoreError};

/// How many entries [`MemoryStore::default`] keeps.
const DEFAULT_CAPACITY: u64 = 1_000_000;
const SHARDS: usize = 16;
/// At most this many expired entries are dropped from a shard's front per write, so a write
/// never stalls on a large batch of expiries.
const EXPIRED_PER_WRITE: usize = 4;

pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

struct Shard {
    /// Oldest write first.
    entries: LinkedHashMap<Box<str>, (Box<str>, Instant)>,
    capacity: usize,
}

impl Shard {
    fn live(&self, key: &str, now: Instant) -> Option<&str> {
        self.entries
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(value, _)| &**value)
    }

    /// Writes `key` as the newest entry, making room first.
    fn write(&mut self, key: &str, value: &str, expires: Instant, now: Instant) {
        self.entries.remove(key);
        for _ in 0..EXPIRED_PER_WRITE {
            match self.entries.front() {
                Some((_, (_, at))) if *at <= now => {
                    self.entries.pop_front();
                }
                _ => break,
            }
        }
        while self.entries.len() >= self.capacity {
            self.entries.pop_front();
        }
        self.entries.insert(key.into(), (value.into(), expires));
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::bounded(DEFAULT_CAPACITY)
    }
}

impl MemoryStore {
    pub fn bounded(capacity: u64) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX).max(1);
        let shards = SHARDS.min(capacity);
        let per_shard = capacity / shards;
        Self {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: LinkedHashMap::new(),
                        capacity: per_shard,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let index = self.hasher.hash_one(key) as usize % self.shards.len();
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How many entries are held (live or expired but not yet dropped).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entries
                    .len()
            })
            .sum()
    }
}

impl StateStore for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        let value = self.shard(key).live(key, Instant::now()).map(str::to_owned);
        Box::pin(async move { Ok(value) })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let now = Instant::now();
        self.shard(key).write(key, value, now + ttl, now);
        Box::pin(async move { Ok(()) })
    }

    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let now = Instant::now();
        // One critical section per key: of concurrent callers, exactly one sees it absent.
        let mut shard = self.shard(key);
        let absent = shard.live(key, now).is_none();
        if absent {
            shard.write(key, value, now + ttl, now);
        }
        drop(shard);
        Box::pin(async move { Ok(absent) })
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.shard(key).entries.remove(key);
        Box::pin(async move { Ok(()) })
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exactly_one_caller_sets_a_key_and_expired_keys_are_free_again() {
        let store = std::sync::Arc::new(MemoryStore::default());
        let winners: Vec<bool> = futures_util::future::join_all((0..32).map(|i| {
            let store = store.clone();
            async move {
                store
                    .put_if_absent("seen:x", &i.to_string(), Duration::from_secs(60))
                    .await
                    .unwrap()
            }
        }))
        .await;
        assert_eq!(winners.iter().filter(|w| **w).count(), 1);
        store.put("gone", "x", Duration::ZERO).await.unwrap();
        assert_eq!(store.get("gone").await.unwrap(), None);
        assert!(store
            .put_if_absent("gone", "y", Duration::from_secs(60))
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn the_store_stays_within_its_capacity() {
        let store = MemoryStore::bounded(100);
        for i in 0..1_000 {
            store
                .put(&format!("k{i}"), "v", Duration::from_secs(60))
                .await
                .unwrap();
        }
        assert!(store.len() <= 100, "{}", store.len());
        assert_eq!(
            store.get("k999").await.unwrap().as_deref(),
            Some("v"),
            "the newest stay"
        );
        assert_eq!(store.get("k0").await.unwrap(), None, "the oldest go first");
    }

    #[tokio::test]
    async fn expired_entries_make_room_before_live_ones_are_dropped() {
        let store = MemoryStore::bounded(SHARDS as u64 * 4);
        for i in 0..1_000 {
            store
                .put(&format!("old{i}"), "v", Duration::ZERO)
                .await
                .unwrap();
        }
        store
            .put("live", "v", Duration::from_secs(60))
            .await
            .unwrap();
        for i in 0..2 {
            store
                .put(&format!("new{i}"), "v", Duration::from_secs(60))
                .await
                .unwrap();
        }
        assert_eq!(store.get("live").await.unwrap().as_deref(), Some("v"));
        store.remove("live").await.unwrap();
        assert_eq!(store.get("live").await.unwrap(), None);
    }
}

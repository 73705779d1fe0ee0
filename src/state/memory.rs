//! A [`StateStore`] in process memory, bounded: at most `capacity` entries (the least used go
//! first when it is full), each also expiring on its own time. Nothing survives a restart.

use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use moka::{ops::compute::Op, sync::Cache};

use super::{StateStore, StoreError};

/// How many entries [`MemoryStore::default`] keeps.
const DEFAULT_CAPACITY: u64 = 1_000_000;

pub struct MemoryStore {
    entries: Cache<String, (String, Instant)>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::bounded(DEFAULT_CAPACITY)
    }
}

impl MemoryStore {
    pub fn bounded(capacity: u64) -> Self {
        Self {
            entries: Cache::builder().max_capacity(capacity).build(),
        }
    }

    fn live(&self, key: &str) -> Option<String> {
        self.entries
            .get(key)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(value, _)| value)
    }
}

impl StateStore for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move { Ok(self.live(key)) })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.entries
                .insert(key.to_owned(), (value.to_owned(), Instant::now() + ttl));
            Ok(())
        })
    }

    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let now = Instant::now();
            // One atomic step per key: of concurrent callers, exactly one sees it absent.
            let result = self
                .entries
                .entry(key.to_owned())
                .and_compute_with(|existing| match existing {
                    Some(entry) if entry.value().1 > now => Op::Nop,
                    _ => Op::Put((value.to_owned(), now + ttl)),
                });
            Ok(!matches!(
                result,
                moka::ops::compute::CompResult::Unchanged(_)
            ))
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.entries.invalidate(key);
            Ok(())
        })
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
        store.entries.run_pending_tasks();
        assert!(
            store.entries.entry_count() <= 100,
            "{}",
            store.entries.entry_count()
        );
    }
}

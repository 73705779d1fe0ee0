//! A [`StateStore`] in process memory: nothing survives a restart. For tests and tools.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use futures_util::future::BoxFuture;

use super::{StateStore, StoreError};

#[derive(Default)]
pub struct MemoryStore {
    entries: Mutex<HashMap<String, (String, Instant)>>,
}

impl MemoryStore {
    fn live(&self, key: &str) -> Option<String> {
        let entries = self.entries.lock().expect("poisoned");
        entries
            .get(key)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(value, _)| value.clone())
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
                .lock()
                .expect("poisoned")
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
            let mut entries = self.entries.lock().expect("poisoned");
            let now = Instant::now();
            if entries.get(key).is_some_and(|(_, expires)| *expires > now) {
                return Ok(false);
            }
            entries.insert(key.to_owned(), (value.to_owned(), now + ttl));
            Ok(true)
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.entries.lock().expect("poisoned").remove(key);
            Ok(())
        })
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

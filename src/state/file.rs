//! A [`StateStore`] in files: one small JSON file per key under a directory (by default
//! `OUTBOX_DIR/state`), so what one instance records survives its restarts.
//!
//! Each write goes to a temporary file that is renamed over the entry, so a reader never sees
//! half an entry and a crash leaves the old or the new value. Files are not fsynced: a killed
//! process loses nothing (the kernel has the data), a lost machine loses the directory anyway
//! (on Cloud Run it is memory); state that must outlive the machine belongs in a shared store.
//! Expired entries are ignored on read and deleted by [`FileStore::sweep`].

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{StateStore, StoreError};

/// How many locks the writes of different keys are spread over.
const WRITE_LOCKS: usize = 64;

#[derive(Clone)]
pub struct FileStore {
    dir: Arc<PathBuf>,
    /// Serialise the writes of a key (a key always takes the same lock), so `put_if_absent`'s
    /// check-then-set is atomic within the process while other keys are written meanwhile.
    writes: Arc<[tokio::sync::Mutex<()>]>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    key: String,
    value: String,
    /// Unix milliseconds.
    expires_at: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Io(format!("{}: {e}", path.display()))
}

impl FileStore {
    /// Opens (creating) the directory and deletes expired entries.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let store = Self {
            dir: Arc::new(dir),
            writes: (0..WRITE_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        };
        store.sweep_now();
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lock serialising the writes of `key`.
    fn lock_of(&self, key: &str) -> &tokio::sync::Mutex<()> {
        let digest = Sha256::digest(key.as_bytes());
        &self.writes[usize::from(digest[0]) % self.writes.len()]
    }

    fn path(&self, key: &str) -> PathBuf {
        let digest = Sha256::digest(key.as_bytes());
        self.dir
            .join(format!("{}.json", hex::encode(&digest[..20])))
    }

    /// Deletes expired entries (and leftovers of interrupted writes); returns how many.
    pub async fn sweep(&self) -> usize {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.sweep_now())
            .await
            .unwrap_or(0)
    }

    fn sweep_now(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(self.dir.as_path()) else {
            return 0;
        };
        let now = now_ms();
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let stale = match path.extension().and_then(|e| e.to_str()) {
                Some("json") => {
                    read_entry(&path).is_ok_and(|e| e.is_some_and(|e| e.expires_at <= now))
                }
                Some("tmp") => true,
                _ => false,
            };
            if stale && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&FileStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| StoreError::Io(format!("state store task failed: {e}")))?
    }

    fn read_live(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(read_entry(&self.path(key))?
            .filter(|e| e.key == key && e.expires_at > now_ms())
            .map(|e| e.value))
    }

    fn write(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        let path = self.path(key);
        let entry = Entry {
            key: key.to_owned(),
            value: value.to_owned(),
            expires_at: now_ms().saturating_add(ttl.as_millis() as u64),
        };
        let body = serde_json::to_vec(&entry).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let temporary = path.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
        std::fs::write(&temporary, body).map_err(io(&temporary))?;
        std::fs::rename(&temporary, &path).map_err(io(&path))
    }
}

fn read_entry(path: &Path) -> Result<Option<Entry>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

impl StateStore for FileStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        let key = key.to_owned();
        Box::pin(self.blocking(move |store| store.read_live(&key)))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let lock = self.lock_of(key);
        let (key, value) = (key.to_owned(), value.to_owned());
        Box::pin(async move {
            let _guard = lock.lock().await;
            self.blocking(move |store| store.write(&key, &value, ttl))
                .await
        })
    }

    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let lock = self.lock_of(key);
        let (key, value) = (key.to_owned(), value.to_owned());
        Box::pin(async move {
            let _guard = lock.lock().await;
            self.blocking(move |store| {
                if store.read_live(&key)?.is_some() {
                    return Ok(false);
                }
                store.write(&key, &value, ttl).map(|()| true)
            })
            .await
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let lock = self.lock_of(key);
        let key = key.to_owned();
        Box::pin(async move {
            let _guard = lock.lock().await;
            self.blocking(move |store| match std::fs::remove_file(store.path(&key)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io(&store.path(&key))(e)),
            })
            .await
        })
    }

    fn kind(&self) -> &'static str {
        "file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_survive_reopening_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        store
            .put("ledger:a", "one", Duration::from_secs(60))
            .await
            .unwrap();
        store.put("ledger:b", "two", Duration::ZERO).await.unwrap();
        assert!(store
            .put_if_absent("ledger:b", "again", Duration::from_secs(60))
            .await
            .unwrap());
        assert!(!store
            .put_if_absent("ledger:a", "other", Duration::from_secs(60))
            .await
            .unwrap());

        let reopened = FileStore::open(dir.path()).unwrap();
        assert_eq!(
            reopened.get("ledger:a").await.unwrap().as_deref(),
            Some("one")
        );
        assert_eq!(
            reopened.get("ledger:b").await.unwrap().as_deref(),
            Some("again")
        );
        reopened.remove("ledger:a").await.unwrap();
        assert_eq!(reopened.get("ledger:a").await.unwrap(), None);
        assert_eq!(reopened.get("never").await.unwrap(), None);

        reopened.put("gone", "x", Duration::ZERO).await.unwrap();
        assert_eq!(
            reopened.get("gone").await.unwrap(),
            None,
            "expired entries are not read"
        );
        assert_eq!(reopened.sweep().await, 1, "and are swept");
    }

    #[tokio::test]
    async fn put_if_absent_lets_exactly_one_of_many_callers_win() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let attempts = (0..16).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .put_if_absent("dedupe:x", &i.to_string(), Duration::from_secs(60))
                    .await
                    .unwrap()
            })
        });
        let mut winners = 0;
        for attempt in attempts {
            winners += usize::from(attempt.await.unwrap());
        }
        assert_eq!(winners, 1);
    }
}

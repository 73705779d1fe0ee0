//! A [`StateStore`] held in memory and journalled to one append-only file under a directory
//! (by default `OUTBOX_DIR/state`), so what one instance records survives its restarts.
//!
//! Every change is one line appended to `journal.jsonl` (a single `write` to the page cache,
//! made inline: far cheaper than a file per entry handed to a blocking thread) before it is
//! applied in memory, so a reader of the memory never sees what the journal lacks. Reads never
//! touch the disk. Lines are not fsynced: a killed process loses nothing (the kernel has the
//! data), a lost machine loses the directory anyway (on Cloud Run it is memory); state that
//! must outlive the machine belongs in a shared store.
//!
//! When the journal has grown to twice what its live entries need, it is rewritten with only
//! those (to a temporary file renamed over it, so a crash leaves the old or the new journal).
//! Expired entries are ignored on read and dropped by [`FileStore::sweep`] and by rewrites.
//! One process owns the directory at a time (an exclusive lock on `journal.lock`). Entries
//! left by older versions, one `*.json` file per key, are taken into the journal on open.

use std::{
    borrow::Cow,
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{StateStore, StoreError};

const JOURNAL: &str = "journal.jsonl";
const LOCK: &str = "journal.lock";
/// Below this size the journal is never rewritten.
const REWRITE_FLOOR: u64 = 1 << 20;

#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    journal: Mutex<Journal>,
    /// Held open for the exclusive lock on the directory.
    _lock: File,
}

/// The entries and the file that records them; one lock for both keeps them in step.
struct Journal {
    entries: HashMap<Box<str>, Stored>,
    file: File,
    /// Bytes in the file.
    written: u64,
    /// Bytes the live entries' lines take (what a rewrite would write).
    live: u64,
    line: Vec<u8>,
}

struct Stored {
    value: Box<str>,
    /// Unix milliseconds.
    expires_at: u64,
    /// The length of this entry's line in the journal.
    line_len: u64,
}

/// One journal line: `v` set is a put, absent a removal.
#[derive(Serialize, Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    k: Cow<'a, str>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    v: Option<Cow<'a, str>>,
    #[serde(default)]
    x: u64,
}

/// An entry file of the earlier one-file-per-key layout.
#[derive(Deserialize)]
struct LegacyEntry {
    key: String,
    value: String,
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

fn append_to(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))
}

impl FileStore {
    /// [`Self::open`], waiting up to `patience` for another owner of the directory to let go
    /// (a process still shutting down, as during a restart).
    pub async fn open_when_free(
        dir: impl Into<PathBuf>,
        patience: Duration,
    ) -> Result<Self, StoreError> {
        let dir = dir.into();
        let give_up = tokio::time::Instant::now() + patience;
        let mut waited = false;
        loop {
            match Self::open(&dir) {
                Err(StoreError::Busy(_)) if tokio::time::Instant::now() < give_up => {
                    if !waited {
                        tracing::info!(dir = %dir.display(), "state directory held by another process; waiting for it");
                        waited = true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                result => return result,
            }
        }
    }

    /// Opens (creating) the directory, takes its lock and reads the journal.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        lock.try_lock().map_err(|_| {
            StoreError::Busy(format!(
                "{} is in use by another process (each instance needs a directory of its own)",
                dir.display()
            ))
        })?;

        let journal_path = dir.join(JOURNAL);
        let mut entries = HashMap::new();
        let skipped = replay(&journal_path, &mut entries)?;
        if skipped > 0 {
            tracing::warn!(
                skipped,
                journal = %journal_path.display(),
                "unreadable state journal lines skipped (a write cut short by a crash)"
            );
        }
        let legacy = import_legacy(&dir, &mut entries);
        let file = append_to(&journal_path)?;
        let written = file.metadata().map_err(io(&journal_path))?.len();
        let mut journal = Journal {
            entries,
            file,
            written,
            live: 0,
            line: Vec::with_capacity(256),
        };
        journal.live = journal.entries.values().map(|e| e.line_len).sum();
        if legacy.imported > 0 || skipped > 0 {
            journal.rewrite(&dir)?;
        }
        for path in legacy.files {
            let _ = std::fs::remove_file(path);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                dir,
                journal: Mutex::new(journal),
                _lock: lock,
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn journal(&self) -> MutexGuard<'_, Journal> {
        self.inner
            .journal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops expired entries (and rewrites the journal when that halves it); returns how many.
    pub async fn sweep(&self) -> usize {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut journal = store.journal();
            let now = now_ms();
            let before = journal.entries.len();
            let mut freed = 0;
            journal.entries.retain(|_, entry| {
                let live = entry.expires_at > now;
                if !live {
                    freed += entry.line_len;
                }
                live
            });
            journal.live = journal.live.saturating_sub(freed);
            let removed = before - journal.entries.len();
            journal.rewrite_if_due(&store.inner.dir);
            removed
        })
        .await
        .unwrap_or(0)
    }

    /// How many entries are held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.journal().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The journal's size on disk, which a rewrite brings back to what the entries need.
    pub fn journal_bytes(&self) -> u64 {
        self.journal().written
    }

    /// Sets `key` when `only_if_absent` allows it; `true` when it was set.
    fn set(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
        only_if_absent: bool,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut journal = self.journal();
        if only_if_absent && journal.live_value(key, now).is_some() {
            return Ok(false);
        }
        let expires_at = now.saturating_add(ttl.as_millis() as u64);
        let line_len = journal.append(&self.inner.dir, key, Some(value), expires_at)?;
        let stored = Stored {
            value: value.into(),
            expires_at,
            line_len,
        };
        journal.live += line_len;
        if let Some(old) = journal.entries.insert(key.into(), stored) {
            journal.live = journal.live.saturating_sub(old.line_len);
        }
        journal.rewrite_if_due(&self.inner.dir);
        Ok(true)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut journal = self.journal();
        if !journal.entries.contains_key(key) {
            return Ok(());
        }
        journal.append(&self.inner.dir, key, None, 0)?;
        if let Some(old) = journal.entries.remove(key) {
            journal.live = journal.live.saturating_sub(old.line_len);
        }
        journal.rewrite_if_due(&self.inner.dir);
        Ok(())
    }
}

impl Journal {
    fn live_value(&self, key: &str, now: u64) -> Option<&str> {
        self.entries
            .get(key)
            .filter(|entry| entry.expires_at > now)
            .map(|entry| &*entry.value)
    }

    /// Appends one line in one write; returns its length. A write cut short is cut off again,
    /// so the next line starts on a line of its own.
    fn append(
        &mut self,
        dir: &Path,
        key: &str,
        value: Option<&str>,
        expires_at: u64,
    ) -> Result<u64, StoreError> {
        self.line.clear();
        encode(&mut self.line, key, value, expires_at);
        if let Err(error) = self.file.write_all(&self.line) {
            let _ = self.file.set_len(self.written);
            return Err(io(&dir.join(JOURNAL))(error));
        }
        let len = self.line.len() as u64;
        self.written += len;
        Ok(len)
    }

    fn rewrite_if_due(&mut self, dir: &Path) {
        if self.written >= REWRITE_FLOOR && self.written >= 2 * self.live {
            if let Err(error) = self.rewrite(dir) {
                tracing::warn!(%error, "state journal not rewritten; it keeps growing meanwhile");
            }
        }
    }

    /// Writes the live entries to a new journal and renames it over the old one.
    fn rewrite(&mut self, dir: &Path) -> Result<(), StoreError> {
        let now = now_ms();
        self.entries.retain(|_, entry| entry.expires_at > now);
        let mut body = Vec::with_capacity(self.live as usize);
        for (key, entry) in &mut self.entries {
            let start = body.len();
            encode(&mut body, key, Some(&entry.value), entry.expires_at);
            entry.line_len = (body.len() - start) as u64;
        }
        let temporary = dir.join(format!("{JOURNAL}.tmp"));
        std::fs::write(&temporary, &body).map_err(io(&temporary))?;
        let path = dir.join(JOURNAL);
        std::fs::rename(&temporary, &path).map_err(io(&path))?;
        self.file = append_to(&path)?;
        self.written = body.len() as u64;
        self.live = self.written;
        Ok(())
    }
}

fn encode(out: &mut Vec<u8>, key: &str, value: Option<&str>, expires_at: u64) {
    let line = Line {
        k: Cow::Borrowed(key),
        v: value.map(Cow::Borrowed),
        x: expires_at,
    };
    serde_json::to_writer(&mut *out, &line).expect("a journal line serialises");
    out.push(b'\n');
}

/// Applies the journal at `path` to `entries`; returns how many lines were unreadable.
fn replay(path: &Path, entries: &mut HashMap<Box<str>, Stored>) -> Result<usize, StoreError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(path)(e)),
    };
    let now = now_ms();
    let mut reader = BufReader::new(file);
    let mut raw = Vec::new();
    let mut skipped = 0;
    loop {
        raw.clear();
        let read = reader.read_until(b'\n', &mut raw).map_err(io(path))?;
        if read == 0 {
            return Ok(skipped);
        }
        let Ok(line) = serde_json::from_slice::<Line>(raw.trim_ascii_end()) else {
            skipped += 1;
            continue;
        };
        match line.v {
            Some(value) if line.x > now => {
                let stored = Stored {
                    value: value.into(),
                    expires_at: line.x,
                    line_len: read as u64,
                };
                entries.insert(line.k.into(), stored);
            }
            _ => {
                entries.remove(&*line.k);
            }
        }
    }
}

/// What [`import_legacy`] found.
struct Legacy {
    imported: usize,
    /// Entry files (and leftovers of their interrupted writes) to delete once the journal
    /// holds what they held.
    files: Vec<PathBuf>,
}

/// Takes the live entries of the one-file-per-key layout the journal does not know of.
fn import_legacy(dir: &Path, entries: &mut HashMap<Box<str>, Stored>) -> Legacy {
    let mut legacy = Legacy {
        imported: 0,
        files: Vec::new(),
    };
    let Ok(listing) = std::fs::read_dir(dir) else {
        return legacy;
    };
    let now = now_ms();
    for item in listing.flatten() {
        let path = item.path();
        let name = item.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".tmp") && name != format!("{JOURNAL}.tmp") {
            legacy.files.push(path);
        } else if name.ends_with(".json") {
            let entry = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<LegacyEntry>(&bytes).ok());
            if let Some(entry) = entry.filter(|e| e.expires_at > now) {
                if !entries.contains_key(entry.key.as_str()) {
                    let stored = Stored {
                        value: entry.value.into(),
                        expires_at: entry.expires_at,
                        line_len: 0,
                    };
                    entries.insert(entry.key.into(), stored);
                    legacy.imported += 1;
                }
            }
            legacy.files.push(path);
        }
    }
    legacy
}

impl StateStore for FileStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        let value = self.journal().live_value(key, now_ms()).map(str::to_owned);
        Box::pin(async move { Ok(value) })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.set(key, value, ttl, false).map(|_| ()) })
    }

    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move { self.set(key, value, ttl, true) })
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.delete(key) })
    }

    fn kind(&self) -> &'static str {
        "file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn entries_survive_reopening_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        store.put("ledger:a", "one", MINUTE).await.unwrap();
        store.put("ledger:b", "two", Duration::ZERO).await.unwrap();
        assert!(store
            .put_if_absent("ledger:b", "again", MINUTE)
            .await
            .unwrap());
        assert!(!store
            .put_if_absent("ledger:a", "other", MINUTE)
            .await
            .unwrap());
        store.put("ledger:c", "three", MINUTE).await.unwrap();
        store.remove("ledger:c").await.unwrap();
        drop(store);

        let reopened = FileStore::open(dir.path()).unwrap();
        assert_eq!(
            reopened.get("ledger:a").await.unwrap().as_deref(),
            Some("one")
        );
        assert_eq!(
            reopened.get("ledger:b").await.unwrap().as_deref(),
            Some("again")
        );
        assert_eq!(reopened.get("ledger:c").await.unwrap(), None, "removed");
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
        assert_eq!(reopened.len(), 1);
    }

    #[tokio::test]
    async fn one_process_owns_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let error = FileStore::open(dir.path())
            .err()
            .expect("second open refused");
        assert!(error.to_string().contains("in use"), "{error}");
        drop(store);
        let store = FileStore::open(dir.path()).expect("free again once the first is gone");

        let released = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(store);
        });
        let waited = FileStore::open_when_free(dir.path(), Duration::from_secs(10))
            .await
            .expect("opened once the owner let go");
        released.await.unwrap();
        assert!(
            FileStore::open(dir.path()).is_err(),
            "held by the waiter now"
        );
        drop(waited);
    }

    #[tokio::test]
    async fn put_if_absent_lets_exactly_one_of_many_callers_win() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let attempts = (0..16).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .put_if_absent("dedupe:x", &i.to_string(), MINUTE)
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

    #[tokio::test]
    async fn the_journal_is_rewritten_to_its_live_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let value = "v".repeat(200);
        // Many overwrites of a few keys: without rewrites the journal would hold ~5 MB.
        for round in 0..2_000 {
            for key in 0..10 {
                store
                    .put(&format!("k{key}"), &format!("{round}{value}"), MINUTE)
                    .await
                    .unwrap();
            }
        }
        let size = std::fs::metadata(dir.path().join(JOURNAL)).unwrap().len();
        assert!(size < 2 * REWRITE_FLOOR, "journal is {size} bytes");
        drop(store);
        let reopened = FileStore::open(dir.path()).unwrap();
        assert_eq!(reopened.len(), 10);
        assert_eq!(
            reopened.get("k3").await.unwrap(),
            Some(format!("1999{value}"))
        );
    }

    #[tokio::test]
    async fn a_line_cut_short_by_a_crash_loses_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        store.put("kept", "yes", MINUTE).await.unwrap();
        drop(store);
        let mut file = append_to(&dir.path().join(JOURNAL)).unwrap();
        file.write_all(br#"{"k":"torn","v":"hal"#).unwrap();
        drop(file);

        let reopened = FileStore::open(dir.path()).unwrap();
        assert_eq!(reopened.get("kept").await.unwrap().as_deref(), Some("yes"));
        assert_eq!(reopened.get("torn").await.unwrap(), None);
        reopened.put("after", "fine", MINUTE).await.unwrap();
        drop(reopened);
        let again = FileStore::open(dir.path()).unwrap();
        assert_eq!(again.get("after").await.unwrap().as_deref(), Some("fine"));
        assert_eq!(again.len(), 2);
    }

    #[tokio::test]
    async fn entries_of_the_one_file_per_key_layout_are_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let later = now_ms() + 60_000;
        let old = |name: &str, key: &str, expires_at: u64| {
            let body =
                serde_json::json!({"key": key, "value": "from before", "expires_at": expires_at});
            std::fs::write(dir.path().join(name), body.to_string()).unwrap();
        };
        old("0a1b.json", "ledger:p", later);
        old("2c3d.json", "ledger:expired", 1);
        std::fs::write(dir.path().join("0a1b.json.5f.tmp"), "half").unwrap();

        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(
            store.get("ledger:p").await.unwrap().as_deref(),
            Some("from before")
        );
        assert_eq!(store.len(), 1);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != JOURNAL && name != LOCK)
            .collect();
        assert!(left.is_empty(), "old files left: {left:?}");
        drop(store);
        let reopened = FileStore::open(dir.path()).unwrap();
        assert_eq!(
            reopened.get("ledger:p").await.unwrap().as_deref(),
            Some("from before")
        );
    }
}

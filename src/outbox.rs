//! The durable outbox: accepted events the broker has not confirmed yet, one file each.
//!
//! An event is written to a temporary file, fsynced, renamed into place and the directory
//! fsynced, so once [`Outbox::append`] returns it survives a crash or `kill -9`. File names
//! sort in append order (`<micros>-<sequence>.json`); [`Outbox::pending`] returns them in that
//! order and the drainer publishes them oldest first.

use std::{
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
};

use tokio::sync::Notify;

use crate::bus::BusMessage;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("outbox entry {path} is not a valid event: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> OutboxError + '_ {
    move |source| OutboxError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    depth: AtomicUsize,
    sequence: AtomicU64,
    appended: Notify,
}

/// One stored event.
pub struct OutboxEntry {
    pub path: PathBuf,
}

impl Outbox {
    /// Opens (creating if needed) the outbox directory and counts what it already holds.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, OutboxError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        // Leftover temporary files are writes that never completed: the webhook was not
        // answered 2xx for them, so the provider retries and nothing is lost by removing them.
        for entry in fs::read_dir(&dir).map_err(io_error(&dir))? {
            let path = entry.map_err(io_error(&dir))?.path();
            if is_temporary(&path) {
                let _ = fs::remove_file(&path);
            }
        }
        let outbox = Self {
            inner: Arc::new(Inner {
                dir,
                depth: AtomicUsize::new(0),
                sequence: AtomicU64::new(0),
                appended: Notify::new(),
            }),
        };
        let depth = outbox.list()?.len();
        outbox.inner.depth.store(depth, Ordering::SeqCst);
        Ok(outbox)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Events currently waiting.
    pub fn depth(&self) -> usize {
        self.inner.depth.load(Ordering::SeqCst)
    }

    /// Durably stores `message`; returns once it is on disk.
    pub async fn append(&self, message: &BusMessage) -> Result<(), OutboxError> {
        let body = serde_json::to_vec(message).expect("BusMessage always serialises");
        let sequence = self.inner.sequence.fetch_add(1, Ordering::SeqCst);
        let micros = chrono::Utc::now().timestamp_micros().max(0);
        let name = format!("{micros:020}-{sequence:010}.json");
        let dir = self.inner.dir.clone();
        tokio::task::spawn_blocking(move || write_durably(&dir, &name, &body))
            .await
            .expect("outbox writer does not panic")?;
        self.inner.depth.fetch_add(1, Ordering::SeqCst);
        self.inner.appended.notify_one();
        Ok(())
    }

    /// Waits until something is appended (or returns at once if an append happened since the
    /// last wait).
    pub async fn appended(&self) {
        self.inner.appended.notified().await
    }

    /// Stored entries, oldest first.
    pub async fn pending(&self) -> Result<Vec<OutboxEntry>, OutboxError> {
        let outbox = self.clone();
        tokio::task::spawn_blocking(move || outbox.list())
            .await
            .expect("outbox listing does not panic")
    }

    pub async fn read(&self, entry: &OutboxEntry) -> Result<BusMessage, OutboxError> {
        let path = entry.path.clone();
        let bytes = tokio::fs::read(&path).await.map_err(io_error(&path))?;
        serde_json::from_slice(&bytes).map_err(|source| OutboxError::Corrupt { path, source })
    }

    /// Removes an entry once the broker confirmed it.
    pub async fn remove(&self, entry: OutboxEntry) -> Result<(), OutboxError> {
        tokio::fs::remove_file(&entry.path)
            .await
            .map_err(io_error(&entry.path))?;
        self.inner.depth.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }

    /// Moves an unreadable entry aside (into `corrupt/`) so it neither blocks the queue nor
    /// disappears.
    pub async fn quarantine(&self, entry: OutboxEntry) -> Result<PathBuf, OutboxError> {
        let corrupt_dir = self.inner.dir.join("corrupt");
        tokio::fs::create_dir_all(&corrupt_dir)
            .await
            .map_err(io_error(&corrupt_dir))?;
        let target = corrupt_dir.join(entry.path.file_name().expect("entries have names"));
        tokio::fs::rename(&entry.path, &target)
            .await
            .map_err(io_error(&entry.path))?;
        self.inner.depth.fetch_sub(1, Ordering::SeqCst);
        Ok(target)
    }

    fn list(&self) -> Result<Vec<OutboxEntry>, OutboxError> {
        let dir = &self.inner.dir;
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(io_error(dir))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| {
                path.extension().is_some_and(|ext| ext == "json")
                    && !is_temporary(path)
                    && path.is_file()
            })
            .collect();
        paths.sort();
        Ok(paths.into_iter().map(|path| OutboxEntry { path }).collect())
    }
}

fn is_temporary(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".tmp-"))
}

fn write_durably(dir: &Path, name: &str, body: &[u8]) -> Result<(), OutboxError> {
    let temporary = dir.join(format!(".tmp-{name}"));
    let target = dir.join(name);
    let mut file = File::create(&temporary).map_err(io_error(&temporary))?;
    file.write_all(body).map_err(io_error(&temporary))?;
    file.sync_all().map_err(io_error(&temporary))?;
    drop(file);
    fs::rename(&temporary, &target).map_err(io_error(&target))?;
    // The rename is only durable once the directory entry is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str) -> BusMessage {
        BusMessage::json(
            "internal.ingress.v1",
            id.to_owned(),
            "c".to_owned(),
            "chat.message.v1",
            "test",
            &serde_json::json!({"id": id}),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn entries_come_back_in_append_order_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        for i in 0..25 {
            outbox.append(&message(&format!("m{i}"))).await.unwrap();
        }
        assert_eq!(outbox.depth(), 25);
        std::fs::write(dir.path().join(".tmp-half-written.json"), b"{").unwrap();

        let reopened = Outbox::open(dir.path()).unwrap();
        assert_eq!(reopened.depth(), 25);
        let pending = reopened.pending().await.unwrap();
        let mut ids = Vec::new();
        for entry in pending {
            ids.push(reopened.read(&entry).await.unwrap().message_id);
            reopened.remove(entry).await.unwrap();
        }
        let expected: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
        assert_eq!(ids, expected);
        assert_eq!(reopened.depth(), 0);
        assert!(!dir.path().join(".tmp-half-written.json").exists());
    }

    #[tokio::test]
    async fn corrupt_entries_are_set_aside_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("00000000000000000001-0000000000.json"),
            b"nonsense",
        )
        .unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        assert_eq!(outbox.depth(), 1);
        let entry = outbox.pending().await.unwrap().pop().unwrap();
        assert!(matches!(
            outbox.read(&entry).await,
            Err(OutboxError::Corrupt { .. })
        ));
        let moved = outbox.quarantine(entry).await.unwrap();
        assert!(moved.exists());
        assert_eq!(outbox.depth(), 0);
        assert!(outbox.pending().await.unwrap().is_empty());
    }
}

//! Per-conversation checkpoints: the index of the last message published downstream, kept so
//! a restart resumes from history instead of losing or re-reading everything.
//!
//! `set` only records; `flush` makes it durable. The client flushes from a background task
//! after commits, so many commits share one write.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

pub trait CheckpointStore: Send + Sync + 'static {
    fn get(&self, conversation_sid: &str) -> Option<u64>;
    fn set(&self, conversation_sid: &str, index: u64);
    fn all(&self) -> HashMap<String, u64>;
    /// Makes every `set` so far durable.
    fn flush(&self) -> Result<(), CheckpointError>;
}

/// For tests and for deployments that accept replays after a restart.
#[derive(Default)]
pub struct MemoryCheckpointStore {
    entries: Mutex<HashMap<String, u64>>,
}

impl CheckpointStore for MemoryCheckpointStore {
    fn get(&self, conversation_sid: &str) -> Option<u64> {
        lock(&self.entries).get(conversation_sid).copied()
    }

    fn set(&self, conversation_sid: &str, index: u64) {
        lock(&self.entries).insert(conversation_sid.to_owned(), index);
    }

    fn all(&self) -> HashMap<String, u64> {
        lock(&self.entries).clone()
    }

    fn flush(&self) -> Result<(), CheckpointError> {
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map half-updated (single inserts), so
    // the data is still good.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    conversations: BTreeMap<String, u64>,
}

struct FileState {
    entries: HashMap<String, u64>,
    /// Bumped by every `set`; compared with what was last written.
    version: u64,
    written: u64,
}

/// One JSON file, `checkpoints.json`, replaced atomically (temp file, fsync, rename, fsync of
/// the directory).
pub struct FileCheckpointStore {
    path: PathBuf,
    state: Mutex<FileState>,
    /// Serializes writers so two flushes never share the temp file.
    write_lock: Mutex<()>,
}

impl FileCheckpointStore {
    pub const FILE_NAME: &'static str = "checkpoints.json";

    /// Opens (creating the directory if needed) and loads the file. A corrupt file is an
    /// error, not an empty store: starting from nothing would replay every conversation.
    pub fn open(directory: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let directory = directory.as_ref();
        fs::create_dir_all(directory).map_err(|source| CheckpointError::Io {
            path: directory.to_owned(),
            source,
        })?;
        let path = directory.join(Self::FILE_NAME);
        let entries = match fs::read(&path) {
            Ok(bytes) => {
                let file: FileFormat =
                    serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if file.version != 1 {
                    return Err(CheckpointError::Corrupt {
                        path,
                        reason: format!("unknown version {}", file.version),
                    });
                }
                file.conversations.into_iter().collect()
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(source) => return Err(CheckpointError::Io { path, source }),
        };
        Ok(Self {
            path,
            state: Mutex::new(FileState {
                entries,
                version: 0,
                written: 0,
            }),
            write_lock: Mutex::new(()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_atomically(&self, bytes: &[u8]) -> Result<(), CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: self.path.clone(),
            source,
        };
        let temp = self.path.with_extension("json.tmp");
        let mut file = File::create(&temp).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        fs::rename(&temp, &self.path).map_err(io)?;
        if let Some(directory) = self.path.parent() {
            // Makes the rename itself durable; not all platforms allow opening a directory.
            if let Ok(directory) = File::open(directory) {
                let _ = directory.sync_all();
            }
        }
        Ok(())
    }
}

impl CheckpointStore for FileCheckpointStore {
    fn get(&self, conversation_sid: &str) -> Option<u64> {
        lock(&self.state).entries.get(conversation_sid).copied()
    }

    fn set(&self, conversation_sid: &str, index: u64) {
        let mut state = lock(&self.state);
        if state.entries.get(conversation_sid) != Some(&index) {
            state.entries.insert(conversation_sid.to_owned(), index);
            state.version += 1;
        }
    }

    fn all(&self) -> HashMap<String, u64> {
        lock(&self.state).entries.clone()
    }

    fn flush(&self) -> Result<(), CheckpointError> {
        let _writer = lock(&self.write_lock);
        let (bytes, version) = {
            let state = lock(&self.state);
            if state.version == state.written {
                return Ok(());
            }
            let file = FileFormat {
                version: 1,
                conversations: state
                    .entries
                    .iter()
                    .map(|(sid, index)| (sid.clone(), *index))
                    .collect(),
            };
            let bytes = serde_json::to_vec_pretty(&file).map_err(|e| CheckpointError::Corrupt {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
            (bytes, state.version)
        };
        self.write_atomically(&bytes)?;
        let mut state = lock(&self.state);
        state.written = state.written.max(version);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_flush_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCheckpointStore::open(dir.path().join("nested")).unwrap();
        assert_eq!(store.get("CH1"), None);
        store.set("CH1", 4);
        store.set("CH2", 0);
        store.set("CH1", 7);
        assert_eq!(store.get("CH1"), Some(7));
        store.flush().unwrap();
        let reopened = FileCheckpointStore::open(dir.path().join("nested")).unwrap();
        assert_eq!(reopened.get("CH1"), Some(7));
        assert_eq!(reopened.all().len(), 2);
        assert!(!dir.path().join("nested/checkpoints.json.tmp").exists());
    }

    #[test]
    fn unflushed_sets_are_not_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCheckpointStore::open(dir.path()).unwrap();
        store.set("CH1", 1);
        store.flush().unwrap();
        store.set("CH1", 2);
        let reopened = FileCheckpointStore::open(dir.path()).unwrap();
        assert_eq!(reopened.get("CH1"), Some(1));
    }

    #[test]
    fn flush_without_changes_does_not_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCheckpointStore::open(dir.path()).unwrap();
        store.flush().unwrap();
        assert!(!store.path().exists());
        store.set("CH1", 1);
        store.flush().unwrap();
        let modified = fs::metadata(store.path()).unwrap().modified().unwrap();
        store.set("CH1", 1);
        store.flush().unwrap();
        assert_eq!(
            fs::metadata(store.path()).unwrap().modified().unwrap(),
            modified
        );
    }

    #[test]
    fn corrupt_or_unknown_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("checkpoints.json"), b"{not json").unwrap();
        assert!(matches!(
            FileCheckpointStore::open(dir.path()),
            Err(CheckpointError::Corrupt { .. })
        ));
        fs::write(
            dir.path().join("checkpoints.json"),
            br#"{"version":2,"conversations":{}}"#,
        )
        .unwrap();
        assert!(matches!(
            FileCheckpointStore::open(dir.path()),
            Err(CheckpointError::Corrupt { .. })
        ));
    }

    #[test]
    fn concurrent_sets_and_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(FileCheckpointStore::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..50u64 {
                        store.set(&format!("CH{t}"), i);
                        if i % 10 == 0 {
                            store.flush().unwrap();
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        store.flush().unwrap();
        let reopened = FileCheckpointStore::open(dir.path()).unwrap();
        for t in 0..4 {
            assert_eq!(reopened.get(&format!("CH{t}")), Some(49));
        }
    }

    #[test]
    fn memory_store() {
        let store = MemoryCheckpointStore::default();
        store.set("CH1", 3);
        assert_eq!(store.get("CH1"), Some(3));
        assert!(store.flush().is_ok());
    }
}

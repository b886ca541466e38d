//! Where the shard map is kept between coordinator restarts.

use fulva_proto::{Epoch, ShardMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Failure to load or save the map.
#[derive(Debug, thiserror::Error)]
pub enum MapStoreError {
    /// File system error.
    #[error("shard map file {path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The Kubernetes API refused or failed a call.
    #[error("shard map in Kubernetes ({object}): {message}")]
    Kubernetes {
        /// Namespace/name of the ConfigMap.
        object: String,
        /// What went wrong.
        message: String,
    },
    /// Stored text is not a valid map.
    #[error("shard map file {path} is corrupt: {reason}")]
    Corrupt {
        /// File involved.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Someone else changed the map since `expected` was read.
    #[error("shard map epoch conflict: expected {expected}, stored {stored}")]
    Conflict {
        /// Epoch the writer based its change on.
        expected: Epoch,
        /// Epoch found in the store.
        stored: Epoch,
    },
}

/// Durable home of the shard map, written with compare-and-set on the epoch.
#[tonic::async_trait]
pub trait MapStore: Send + Sync + 'static {
    /// The stored map, if any.
    async fn load(&self) -> Result<Option<ShardMap>, MapStoreError>;
    /// Stores `map` if the stored epoch is `expected` (`None`: nothing stored yet).
    async fn compare_and_set(&self, expected: Option<Epoch>, map: &ShardMap) -> Result<(), MapStoreError>;
}

/// Keeps the map in memory only (tests, throwaway clusters).
#[derive(Default)]
pub struct MemoryMapStore {
    map: std::sync::Mutex<Option<ShardMap>>,
}

#[tonic::async_trait]
impl MapStore for MemoryMapStore {
    async fn load(&self) -> Result<Option<ShardMap>, MapStoreError> {
        Ok(self.map.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    async fn compare_and_set(&self, expected: Option<Epoch>, map: &ShardMap) -> Result<(), MapStoreError> {
        let mut slot = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let stored = slot.as_ref().map(|m| m.epoch);
        if stored != expected {
            return Err(MapStoreError::Conflict {
                expected: expected.unwrap_or(0),
                stored: stored.unwrap_or(0),
            });
        }
        *slot = Some(map.clone());
        Ok(())
    }
}

/// Keeps the map as JSON in a file, replaced atomically (write, fsync, rename).
pub struct FileMapStore {
    path: PathBuf,
    lock: std::sync::Mutex<()>,
}

impl FileMapStore {
    /// A store at `path` (created on first save, with its parent directory).
    pub fn new(path: impl Into<PathBuf>) -> FileMapStore {
        FileMapStore { path: path.into(), lock: std::sync::Mutex::new(()) }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> MapStoreError {
        MapStoreError::Io { path: self.path.clone(), source }
    }

    fn read(&self) -> Result<Option<ShardMap>, MapStoreError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let corrupt = |reason: String| MapStoreError::Corrupt { path: self.path.clone(), reason };
        let map: ShardMap = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        map.validate().map_err(|e| corrupt(e.to_string()))?;
        Ok(Some(map))
    }
}

#[tonic::async_trait]
impl MapStore for FileMapStore {
    async fn load(&self) -> Result<Option<ShardMap>, MapStoreError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.read()
    }

    async fn compare_and_set(&self, expected: Option<Epoch>, map: &ShardMap) -> Result<(), MapStoreError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let stored = self.read()?.map(|m| m.epoch);
        if stored != expected {
            return Err(MapStoreError::Conflict {
                expected: expected.unwrap_or(0),
                stored: stored.unwrap_or(0),
            });
        }
        let dir = self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(map).expect("a shard map always serializes");
        let mut file = std::fs::File::create(&tmp).map_err(|e| self.io(e))?;
        file.write_all(&text).and_then(|()| file.sync_all()).map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulva_proto::{HashRange, NodeInfo, Shard, ShardState};

    fn map(epoch: Epoch) -> ShardMap {
        ShardMap {
            epoch,
            nodes: vec![NodeInfo {
                id: 0,
                data_addr: "127.0.0.1:1".parse().unwrap(),
                control_addr: "127.0.0.1:2".parse().unwrap(),
            }],
            shards: vec![Shard { range: HashRange::FULL, owner: 0, state: ShardState::Normal }],
        }
    }

    #[tokio::test]
    async fn file_store_compare_and_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileMapStore::new(dir.path().join("sub/map.json"));
        assert!(store.load().await.unwrap().is_none());
        store.compare_and_set(None, &map(1)).await.unwrap();
        assert!(matches!(
            store.compare_and_set(None, &map(2)).await,
            Err(MapStoreError::Conflict { stored: 1, .. })
        ));
        store.compare_and_set(Some(1), &map(2)).await.unwrap();
        assert_eq!(store.load().await.unwrap().unwrap().epoch, 2);
        assert!(!dir.path().join("sub/map.json.tmp").exists());
        std::fs::write(store.path(), "{not json").unwrap();
        assert!(matches!(store.load().await, Err(MapStoreError::Corrupt { .. })));
    }
}

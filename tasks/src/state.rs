//! What a try reports besides its value: durable key-value state it proposes (seen
//! files, crawled URLs, cursors), committed only when its DAG run succeeds, and how
//! many records and bytes it read and wrote.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Where committed state is read from (the metadata store, or Redis).
#[async_trait::async_trait]
pub trait StateBackend: Send + Sync {
    /// The committed values of those `keys` that exist in `namespace`.
    async fn get_many(
        &self,
        namespace: &str,
        keys: &[String],
    ) -> Result<HashMap<String, String>, String>;
}

/// A backend with nothing in it (tests, `tasks test`).
pub struct EmptyState;

#[async_trait::async_trait]
impl StateBackend for EmptyState {
    async fn get_many(&self, _: &str, _: &[String]) -> Result<HashMap<String, String>, String> {
        Ok(HashMap::new())
    }
}

/// Committed state held in memory: for `tasks test`-like tools and tests, where
/// [`MemoryState::commit`] plays the part of a run succeeding.
#[derive(Default)]
pub struct MemoryState {
    map: Mutex<HashMap<(String, String), String>>,
}

impl MemoryState {
    /// Commits proposals of `namespace`, as a successful run would.
    pub fn commit(&self, namespace: &str, proposals: Vec<(String, String)>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for (k, v) in proposals {
            map.insert((namespace.to_string(), k), v);
        }
    }
}

#[async_trait::async_trait]
impl StateBackend for MemoryState {
    async fn get_many(
        &self,
        namespace: &str,
        keys: &[String],
    ) -> Result<HashMap<String, String>, String> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        Ok(keys
            .iter()
            .filter_map(|k| {
                map.get(&(namespace.to_string(), k.clone()))
                    .map(|v| (k.clone(), v.clone()))
            })
            .collect())
    }
}

/// A task's view of its state: reads see what earlier successful runs committed;
/// writes are proposals, committed with the run's success — so a failed run leaves the
/// state as it was and the next run sees the same inputs again.
pub struct TaskState {
    backend: Arc<dyn StateBackend>,
    namespace: String,
    proposals: Mutex<Vec<(String, String)>>,
}

impl TaskState {
    pub fn new(backend: Arc<dyn StateBackend>, namespace: String) -> TaskState {
        TaskState {
            backend,
            namespace,
            proposals: Mutex::new(Vec::new()),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub async fn get_many(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, String>, crate::TaskError> {
        self.backend
            .get_many(&self.namespace, keys)
            .await
            .map_err(|e| crate::TaskError::Failed(format!("cannot read task state: {e}")))
    }

    /// Proposes `key = value`, committed when the run succeeds.
    pub fn propose(&self, key: impl Into<String>, value: impl Into<String>) {
        self.proposals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((key.into(), value.into()));
    }

    pub fn take_proposals(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.proposals.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Record and byte counters of one try.
#[derive(Clone, Default)]
pub struct TryMetrics {
    inner: Arc<[AtomicU64; 5]>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MetricsSnapshot {
    pub records_in: u64,
    pub records_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Records a sink failed to write (Kafka deliveries that failed, documents the
    /// Elasticsearch bulk API did not index). Exported as a process metric, not stored.
    #[serde(skip)]
    pub records_failed: u64,
}

impl TryMetrics {
    pub fn read(&self, records: u64, bytes: u64) {
        self.inner[0].fetch_add(records, Ordering::Relaxed);
        self.inner[2].fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn wrote(&self, records: u64, bytes: u64) {
        self.inner[1].fetch_add(records, Ordering::Relaxed);
        self.inner[3].fetch_add(bytes, Ordering::Relaxed);
    }

    /// `records` could not be written (the try usually fails with them).
    pub fn failed(&self, records: u64) {
        self.inner[4].fetch_add(records, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            records_in: self.inner[0].load(Ordering::Relaxed),
            records_out: self.inner[1].load(Ordering::Relaxed),
            bytes_in: self.inner[2].load(Ordering::Relaxed),
            bytes_out: self.inner[3].load(Ordering::Relaxed),
            records_failed: self.inner[4].load(Ordering::Relaxed),
        }
    }
}

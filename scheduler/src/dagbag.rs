//! Reads the DAG folder and records what it finds: each good DAG as a version, each bad
//! file as an import error. A file that breaks keeps its DAG on the last good version.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sluice_core::loader::{load_folder, FolderLoad};
use sluice_store::Store;
use sluice_tasks::Registry;

pub struct DagProcessor {
    folder: PathBuf,
    registry: Registry,
    /// (path, modified, size) of every file at the last load: unchanged → no reparse.
    fingerprint: Option<Vec<(PathBuf, Option<SystemTime>, u64)>>,
}

#[derive(Debug, Default)]
pub struct RefreshSummary {
    pub dags: usize,
    pub files_with_errors: usize,
}

fn fingerprint(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, Option<SystemTime>, u64)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "toml") {
                out.push((path, meta.modified().ok(), meta.len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

impl DagProcessor {
    pub fn new(folder: PathBuf, registry: Registry) -> DagProcessor {
        DagProcessor {
            folder,
            registry,
            fingerprint: None,
        }
    }

    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// Parses the folder (every file on its own).
    pub fn load(&self) -> FolderLoad {
        load_folder(&self.folder, &self.registry)
    }

    /// Reloads the folder if any file changed, and records the result in the store.
    pub async fn refresh(
        &mut self,
        store: &Store,
        paused_at_creation: bool,
    ) -> anyhow::Result<Option<RefreshSummary>> {
        let fp = fingerprint(&self.folder);
        if self.fingerprint.as_ref() == Some(&fp) {
            return Ok(None);
        }
        let load = self.load();
        let summary = record(store, &load, paused_at_creation).await?;
        if summary.files_with_errors > 0 {
            for diags in load.errors.values() {
                for d in diags {
                    tracing::warn!("DAG import error: {d}");
                }
            }
        }
        tracing::info!(
            dags = summary.dags,
            files_with_errors = summary.files_with_errors,
            "DAG folder loaded"
        );
        self.fingerprint = Some(fp);
        Ok(Some(summary))
    }
}

/// Records a folder load in the store.
pub async fn record(
    store: &Store,
    load: &FolderLoad,
    paused_at_creation: bool,
) -> anyhow::Result<RefreshSummary> {
    for dag in &load.dags {
        store.sync_dag(dag, paused_at_creation).await?;
    }
    let present: Vec<String> = load.dags.iter().map(|d| d.dag_id.clone()).collect();
    let broken: Vec<String> = load.errors.keys().cloned().collect();
    store.deactivate_missing(&present, &broken).await?;
    store.set_import_errors(&load.errors).await?;
    Ok(RefreshSummary {
        dags: load.dags.len(),
        files_with_errors: load.errors.len(),
    })
}

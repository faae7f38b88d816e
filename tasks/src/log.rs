//! A try's own log file: one line per event, flushed as written so a reader can tail it
//! while the try runs.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::conn::Masker;

#[derive(Clone)]
pub struct TryLog {
    inner: Arc<Mutex<Option<File>>>,
    path: PathBuf,
    masker: Masker,
}

impl TryLog {
    /// Opens (appending) the log file, creating its directories.
    pub fn open(path: &Path) -> std::io::Result<TryLog> {
        Self::open_masked(path, Masker::default())
    }

    /// Opens the log with `masker` applied to every line written.
    pub fn open_masked(path: &Path, masker: Masker) -> std::io::Result<TryLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(TryLog {
            inner: Arc::new(Mutex::new(Some(file))),
            path: path.to_path_buf(),
            masker,
        })
    }

    /// A log that keeps nothing (for tests and dry runs).
    pub fn discard() -> TryLog {
        TryLog {
            inner: Arc::new(Mutex::new(None)),
            path: PathBuf::new(),
            masker: Masker::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `[timestamp] LEVEL source: message`, secrets masked. Errors writing a log
    /// never fail a try; they are reported once to the process log.
    pub fn line(&self, level: &str, source: &str, message: &str) {
        let masked;
        let message = if self.masker.is_empty() {
            message
        } else {
            masked = self.masker.mask(message);
            masked.as_str()
        };
        let ts = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(file) = guard.as_mut() {
            if let Err(e) = writeln!(file, "[{ts}] {level:<5} {source}: {message}") {
                tracing::warn!(path = %self.path.display(), "cannot write task log: {e}");
                *guard = None;
            }
        }
    }

    pub fn info(&self, message: &str) {
        self.line("INFO", "sluice", message);
    }

    pub fn warn(&self, message: &str) {
        self.line("WARN", "sluice", message);
    }

    pub fn error(&self, message: &str) {
        self.line("ERROR", "sluice", message);
    }
}

//! `files`: emits each new file of a directory once, as a record with its content.
//!
//! Keys: `dir` (required), `glob` ("*.txt"), `recursive` (false), `max_bytes` (1 MiB of
//! content per file; longer content is cut and flagged), `encoding` ("utf-8"),
//! `archive_dir`, `min_age` ("0s").
//!
//! A file is identified by path + size + mtime. Files committed by earlier successful
//! runs (task state) are skipped; every emitted file is proposed to the state, so it
//! counts as processed only when this DAG run succeeds: a failed run emits the same
//! files again. With `archive_dir`, files that earlier successful runs committed are
//! moved there at the start of the next run (a kind cannot act after its run ends, and
//! moving earlier would lose the file if the run then failed).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};
use globset::{GlobBuilder, GlobMatcher};
use serde_json::{json, Map, Value};
use sluice_core::KindKeys;

use crate::csv_kind::encoding_of;
use crate::http::{opt_duration, opt_u64};
use crate::{opt_str, short, TaskContext, TaskError, TaskKind};

const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;
/// Keys per state lookup, to keep each query bounded.
const STATE_CHUNK: usize = 500;

pub struct Files;

/// A file seen in the directory.
#[derive(Clone, Debug)]
struct Found {
    path: PathBuf,
    rel: PathBuf,
    size: u64,
    modified: SystemTime,
    key: String,
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn list(
    dir: &Path,
    matcher: &GlobMatcher,
    match_name_only: bool,
    recursive: bool,
    skip_dir: Option<&Path>,
) -> Result<Vec<Found>, TaskError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| TaskError::Failed(format!("cannot list {}: {e}", d.display())))?;
        for entry in entries {
            let entry = entry
                .map_err(|e| TaskError::Failed(format!("cannot list {}: {e}", d.display())))?;
            let path = entry.path();
            let ft = match entry.file_type() {
                Ok(ft) => ft,
                Err(_) => continue,
            };
            // Subdirectories reached through symlinks are not followed (no loops).
            if ft.is_dir() {
                if recursive && skip_dir != Some(path.as_path()) {
                    stack.push(path);
                }
                continue;
            }
            // The file may vanish between listing and stat (moved by someone else).
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let rel = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
            let candidate = if match_name_only {
                PathBuf::from(entry.file_name())
            } else {
                rel.clone()
            };
            if !matcher.is_match(&candidate) {
                continue;
            }
            let modified = meta.modified().unwrap_or(UNIX_EPOCH);
            let key = format!("{}|{}|{}", path.display(), meta.len(), nanos(modified));
            out.push(Found {
                path,
                rel,
                size: meta.len(),
                modified,
                key,
            });
        }
    }
    out.sort_by(|a, b| a.modified.cmp(&b.modified).then(a.path.cmp(&b.path)));
    Ok(out)
}

/// Moves `f` under `archive_dir`, keeping its relative path; never overwrites.
fn archive(f: &Found, archive_dir: &Path) -> std::io::Result<PathBuf> {
    let mut dest = archive_dir.join(&f.rel);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut n = 1;
    while dest.exists() {
        let mut name = archive_dir.join(&f.rel).into_os_string();
        name.push(format!(".{n}"));
        dest = PathBuf::from(name);
        n += 1;
    }
    if std::fs::rename(&f.path, &dest).is_err() {
        // Another filesystem: copy, then remove the original.
        std::fs::copy(&f.path, &dest)?;
        std::fs::remove_file(&f.path)?;
    }
    Ok(dest)
}

/// Reads at most `max_bytes` and decodes them; a cut multi-byte character at the end
/// of truncated content is dropped rather than garbled.
fn read_content(
    f: &Found,
    max_bytes: u64,
    enc: &'static encoding_rs::Encoding,
) -> std::io::Result<(String, bool, u64)> {
    use std::io::Read;
    let file = std::fs::File::open(&f.path)?;
    let mut buf = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut buf)?;
    let truncated = buf.len() as u64 > max_bytes;
    buf.truncate(max_bytes as usize);
    let mut decoder = enc.new_decoder();
    let mut text = String::with_capacity(
        decoder
            .max_utf8_buffer_length(buf.len())
            .unwrap_or(buf.len() * 3),
    );
    let _ = decoder.decode_to_string(&buf, &mut text, !truncated);
    Ok((text, truncated, buf.len() as u64))
}

#[async_trait::async_trait]
impl TaskKind for Files {
    fn name(&self) -> &'static str {
        "files"
    }

    fn keys(&self) -> KindKeys {
        KindKeys {
            allowed: &[
                "dir",
                "glob",
                "recursive",
                "max_bytes",
                "encoding",
                "archive_dir",
                "min_age",
            ],
            required: &["dir"],
        }
    }

    async fn run(&self, ctx: &TaskContext, args: Map<String, Value>) -> Result<Value, TaskError> {
        let dir_text = opt_str(&args, "dir")?
            .filter(|d| !d.trim().is_empty())
            .ok_or_else(|| TaskError::Fatal("`dir` must be a non-empty string".into()))?;
        let dir = std::path::absolute(dir_text)
            .map_err(|e| TaskError::Fatal(format!("`dir` {dir_text}: {e}")))?;
        if !dir.is_dir() {
            return Err(TaskError::Fatal(format!(
                "`dir` {} is not a directory",
                dir.display()
            )));
        }
        let pattern = opt_str(&args, "glob")?.unwrap_or("*.txt");
        let matcher = GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| TaskError::Fatal(format!("`glob` {pattern:?}: {e}")))?
            .compile_matcher();
        // `*.txt` matches by file name at any depth; `sub/*.txt` by relative path.
        let match_name_only = !pattern.contains('/');
        let recursive = match args.get("recursive") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(TaskError::Fatal(format!(
                    "`recursive` must be true or false, got {}",
                    short(other)
                )))
            }
        };
        let max_bytes = opt_u64(&args, "max_bytes")?.unwrap_or(DEFAULT_MAX_BYTES);
        let enc = encoding_of(&args)?;
        let min_age = opt_duration(&args, "min_age")?.unwrap_or(Duration::ZERO);
        let archive_dir = match opt_str(&args, "archive_dir")? {
            Some(a) => Some(
                std::path::absolute(a)
                    .map_err(|e| TaskError::Fatal(format!("`archive_dir` {a}: {e}")))?,
            ),
            None => None,
        };
        if archive_dir.as_deref() == Some(dir.as_path()) {
            return Err(TaskError::Fatal(
                "`archive_dir` must differ from `dir`".into(),
            ));
        }

        let found = {
            let (d, archive_dir) = (dir.clone(), archive_dir.clone());
            tokio::task::spawn_blocking(move || {
                list(
                    &d,
                    &matcher,
                    match_name_only,
                    recursive,
                    archive_dir.as_deref(),
                )
            })
            .await
            .map_err(|e| TaskError::Failed(format!("listing {}: {e}", dir.display())))??
        };

        let mut committed = std::collections::HashSet::new();
        let keys: Vec<String> = found.iter().map(|f| f.key.clone()).collect();
        for chunk in keys.chunks(STATE_CHUNK) {
            committed.extend(ctx.state.get_many(chunk).await?.into_keys());
        }

        let now = SystemTime::now();
        let (mut done, mut young) = (Vec::new(), 0u64);
        let mut new = Vec::new();
        for f in found {
            if committed.contains(&f.key) {
                done.push(f);
            } else if now.duration_since(f.modified).unwrap_or(Duration::ZERO) < min_age {
                young += 1;
            } else {
                new.push(f);
            }
        }

        let log = ctx.log.clone();
        let cancel = ctx.cancel.clone();
        let archive_to = archive_dir.clone();
        let done_count = done.len();
        let (records, bytes, archived) = tokio::task::spawn_blocking(move || {
            let mut archived = 0u64;
            if let Some(a) = &archive_to {
                for f in &done {
                    match archive(f, a) {
                        Ok(dest) => {
                            archived += 1;
                            log.info(&format!(
                                "archived {} (processed by an earlier run) to {}",
                                f.path.display(),
                                dest.display()
                            ));
                        }
                        // Not fatal: the file stays and is retried next run.
                        Err(e) => log.warn(&format!(
                            "cannot archive {} to {}: {e}",
                            f.path.display(),
                            a.display()
                        )),
                    }
                }
            }
            let mut records = Vec::with_capacity(new.len());
            let mut bytes = 0u64;
            for f in new {
                if cancel.is_cancelled() {
                    return Err(TaskError::Cancelled);
                }
                let (content, truncated, n) = match read_content(&f, max_bytes, enc) {
                    Ok(r) => r,
                    // Vanished since listing (moved by another process): not ours any more.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(TaskError::Failed(format!(
                            "cannot read {}: {e}",
                            f.path.display()
                        )))
                    }
                };
                if truncated {
                    log.warn(&format!(
                        "{}: {} bytes, content cut at max_bytes = {max_bytes}",
                        f.path.display(),
                        f.size
                    ));
                }
                bytes += n;
                records.push((
                    f.key.clone(),
                    json!({
                        "fileName": f.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                        "fullPathName": f.path.display().to_string(),
                        "size": f.size,
                        "modified": rfc3339(f.modified),
                        "content": content,
                        "truncated": truncated,
                    }),
                ));
            }
            Ok((records, bytes, archived))
        })
        .await
        .map_err(|e| TaskError::Failed(format!("reading files: {e}")))??;

        let processed_at = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
        let mut out = Vec::with_capacity(records.len());
        for (key, record) in records {
            ctx.state.propose(key, processed_at.clone());
            out.push(record);
        }
        ctx.metrics.read(out.len() as u64, bytes);
        ctx.log.info(&format!(
            "{}: {} new file(s), {} already processed{}, {} too recent (min_age)",
            dir.display(),
            out.len(),
            done_count,
            if archive_dir.is_some() {
                format!(" ({archived} archived)")
            } else {
                String::new()
            },
            young
        ));
        Ok(Value::Array(out))
    }
}

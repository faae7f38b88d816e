//! `csv`: reads a CSV file into JSON records, streaming it row by row.
//!
//! Keys: `path` (required), `delimiter` (","), `quote` ("\""), `has_header` (true),
//! `encoding` ("utf-8"; any WHATWG label such as "euc-kr"), `columns` (list overriding
//! the header), `types` (table column → int | float | bool | string | json | list),
//! `list_separator` (","), `skip_rows` (0, rows before the header), `limit`,
//! `on_bad_row` ("fail" | "skip").

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{Map, Value};
use sluice_core::KindKeys;

use crate::http::opt_u64;
use crate::{opt_str, short, TaskContext, TaskError, TaskKind};

/// Bad rows named individually in the log before the rest are only counted.
const LOGGED_BAD_ROWS: u64 = 20;

pub struct Csv;

#[derive(Clone, Copy, Debug)]
enum ColType {
    Int,
    Float,
    Bool,
    Str,
    Json,
    List,
}

impl ColType {
    fn parse(col: &str, v: &Value) -> Result<ColType, TaskError> {
        Ok(match v.as_str().unwrap_or("") {
            "int" | "integer" => ColType::Int,
            "float" | "number" => ColType::Float,
            "bool" | "boolean" => ColType::Bool,
            "string" | "str" => ColType::Str,
            "json" => ColType::Json,
            "list" => ColType::List,
            _ => {
                return Err(TaskError::Fatal(format!(
                    "`types.{col}` must be one of int, float, bool, string, json, list; got {}",
                    short(v)
                )))
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            ColType::Int => "int",
            ColType::Float => "float",
            ColType::Bool => "bool",
            ColType::Str => "string",
            ColType::Json => "json",
            ColType::List => "list",
        }
    }

    /// Converts one field; empty fields are null (an empty list for `list`).
    fn convert(self, raw: &str, sep: &str) -> Result<Value, String> {
        let t = raw.trim();
        if t.is_empty() && !matches!(self, ColType::Str | ColType::List) {
            return Ok(Value::Null);
        }
        let bad = || format!("cannot read {:?} as {}", short_str(raw), self.name());
        Ok(match self {
            ColType::Str => Value::String(raw.to_string()),
            ColType::Int => Value::from(t.parse::<i64>().map_err(|_| bad())?),
            ColType::Float => {
                let f = t.parse::<f64>().map_err(|_| bad())?;
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(bad)?
            }
            ColType::Bool => match t.to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "y" | "1" => Value::Bool(true),
                "false" | "f" | "no" | "n" | "0" => Value::Bool(false),
                _ => return Err(bad()),
            },
            ColType::Json => serde_json::from_str(t).map_err(|e| format!("{}: {e}", bad()))?,
            ColType::List => Value::Array(
                raw.split(sep)
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_string()))
                    .collect(),
            ),
        })
    }
}

fn short_str(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}

/// Counts the bytes read from the file, for metrics.
struct Counting<R> {
    inner: R,
    n: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn one_byte(args: &Map<String, Value>, key: &str, default: u8) -> Result<u8, TaskError> {
    match opt_str(args, key)? {
        None => Ok(default),
        Some("\\t") | Some("tab") => Ok(b'\t'),
        Some(s) if s.len() == 1 => Ok(s.as_bytes()[0]),
        Some(s) => Err(TaskError::Fatal(format!(
            "`{key}` must be a single ASCII character, got {s:?}"
        ))),
    }
}

fn opt_bool(args: &Map<String, Value>, key: &str) -> Result<Option<bool>, TaskError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(Some(s == "true")),
        Some(other) => Err(TaskError::Fatal(format!(
            "`{key}` must be true or false, got {}",
            short(other)
        ))),
    }
}

pub(crate) fn encoding_of(
    args: &Map<String, Value>,
) -> Result<&'static encoding_rs::Encoding, TaskError> {
    let label = opt_str(args, "encoding")?.unwrap_or("utf-8");
    encoding_rs::Encoding::for_label(label.trim().as_bytes()).ok_or_else(|| {
        TaskError::Fatal(format!(
            "`encoding` {label:?} is not a known encoding (e.g. utf-8, euc-kr, shift_jis, windows-1252, latin1)"
        ))
    })
}

struct Opts {
    path: String,
    delimiter: u8,
    quote: u8,
    has_header: bool,
    encoding: &'static encoding_rs::Encoding,
    columns: Option<Vec<String>>,
    types: Vec<(String, ColType)>,
    list_separator: String,
    skip_rows: u64,
    limit: Option<u64>,
    skip_bad: bool,
}

struct Outcome {
    records: Vec<Value>,
    rows_read: u64,
    skipped: u64,
}

#[async_trait::async_trait]
impl TaskKind for Csv {
    fn name(&self) -> &'static str {
        "csv"
    }

    fn keys(&self) -> KindKeys {
        KindKeys {
            allowed: &[
                "path",
                "delimiter",
                "quote",
                "has_header",
                "encoding",
                "columns",
                "types",
                "list_separator",
                "skip_rows",
                "limit",
                "on_bad_row",
            ],
            required: &["path"],
        }
    }

    async fn run(&self, ctx: &TaskContext, args: Map<String, Value>) -> Result<Value, TaskError> {
        let path = opt_str(&args, "path")?
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| TaskError::Fatal("`path` must be a non-empty string".into()))?
            .to_string();
        let columns = match args.get("columns") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|v| {
                        v.as_str().map(str::to_string).ok_or_else(|| {
                            TaskError::Fatal(format!(
                                "`columns` must be a list of names, got {}",
                                short(v)
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(other) => {
                return Err(TaskError::Fatal(format!(
                    "`columns` must be a list of names, got {}",
                    short(other)
                )))
            }
        };
        let types = match args.get("types") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| Ok((k.clone(), ColType::parse(k, v)?)))
                .collect::<Result<Vec<_>, TaskError>>()?,
            Some(other) => {
                return Err(TaskError::Fatal(format!(
                    "`types` must be a table of column to type, got {}",
                    short(other)
                )))
            }
        };
        let skip_bad = match opt_str(&args, "on_bad_row")? {
            None | Some("fail") => false,
            Some("skip") => true,
            Some(other) => {
                return Err(TaskError::Fatal(format!(
                    "`on_bad_row` must be \"fail\" or \"skip\", got {other:?}"
                )))
            }
        };
        let opts = Opts {
            path,
            delimiter: one_byte(&args, "delimiter", b',')?,
            quote: one_byte(&args, "quote", b'"')?,
            has_header: opt_bool(&args, "has_header")?.unwrap_or(true),
            encoding: encoding_of(&args)?,
            columns,
            types,
            list_separator: opt_str(&args, "list_separator")?.unwrap_or(",").to_string(),
            skip_rows: opt_u64(&args, "skip_rows")?.unwrap_or(0),
            limit: opt_u64(&args, "limit")?,
            skip_bad,
        };
        let bytes = Arc::new(AtomicU64::new(0));
        let log = ctx.log.clone();
        let cancel = ctx.cancel.clone();
        let counter = bytes.clone();
        let path = opts.path.clone();
        let out = tokio::task::spawn_blocking(move || read_csv(&opts, &log, &cancel, counter))
            .await
            .map_err(|e| TaskError::Failed(format!("reading {path}: {e}")))??;
        let bytes = bytes.load(Ordering::Relaxed);
        // Every data row read counts as read, skipped ones included, so
        // records_in − records returned = rows skipped.
        ctx.metrics.read(out.rows_read, bytes);
        let msg = format!(
            "{path}: {} record(s) from {} row(s), {} byte(s); skipped {} bad row(s)",
            out.records.len(),
            out.rows_read,
            bytes,
            out.skipped
        );
        if out.skipped > 0 {
            ctx.log.warn(&msg);
        } else {
            ctx.log.info(&msg);
        }
        Ok(Value::Array(out.records))
    }
}

fn read_csv(
    o: &Opts,
    log: &crate::TryLog,
    cancel: &tokio_util::sync::CancellationToken,
    counter: Arc<AtomicU64>,
) -> Result<Outcome, TaskError> {
    let file = File::open(&o.path).map_err(|e| {
        let msg = format!("cannot open {}: {e}", o.path);
        if e.kind() == std::io::ErrorKind::NotFound {
            TaskError::Fatal(msg)
        } else {
            TaskError::Failed(msg)
        }
    })?;
    let counting = Counting {
        inner: file,
        n: counter,
    };
    // UTF-8 passes through untouched (so invalid bytes surface as a bad row); other
    // encodings are transcoded to UTF-8 while streaming. A BOM wins either way.
    let decoder = if o.encoding == encoding_rs::UTF_8 {
        encoding_rs_io::DecodeReaderBytesBuilder::new()
            .utf8_passthru(true)
            .build(counting)
    } else {
        encoding_rs_io::DecodeReaderBytesBuilder::new()
            .encoding(Some(o.encoding))
            .build(counting)
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(o.delimiter)
        .quote(o.quote)
        .has_headers(false)
        // Field counts are checked here, to report them as bad rows with their line.
        .flexible(true)
        .from_reader(BufReader::with_capacity(64 * 1024, decoder));

    let mut rows = reader.records();
    for _ in 0..o.skip_rows {
        if rows.next().is_none() {
            break;
        }
    }
    let header: Vec<String> = if o.has_header {
        match rows.next() {
            Some(Ok(r)) => r.iter().map(|h| h.trim().to_string()).collect(),
            Some(Err(e)) => {
                return Err(TaskError::Fatal(format!(
                    "{}: cannot read the header row: {e}",
                    o.path
                )))
            }
            None => Vec::new(),
        }
    } else {
        Vec::new()
    };
    let names: Vec<String> = match &o.columns {
        Some(c) => c.clone(),
        None => header,
    };
    let mut types: HashMap<usize, ColType> = HashMap::new();
    for (col, t) in &o.types {
        let idx = names.iter().position(|n| n == col);
        match idx {
            Some(i) => {
                types.insert(i, *t);
            }
            // A file without header has no names until the first row: checked below.
            None if !names.is_empty() => {
                return Err(TaskError::Fatal(format!(
                    "`types` names column `{col}`, which {} does not have (columns: {})",
                    o.path,
                    names.join(", ")
                )))
            }
            None => {}
        }
    }

    let mut out = Outcome {
        records: Vec::new(),
        rows_read: 0,
        skipped: 0,
    };
    let mut names = names;
    let mut types_pending = names.is_empty() && !o.types.is_empty();
    for row in rows {
        if o.limit.is_some_and(|l| out.records.len() as u64 >= l) {
            break;
        }
        out.rows_read += 1;
        if out.rows_read.is_multiple_of(1024) && cancel.is_cancelled() {
            return Err(TaskError::Cancelled);
        }
        let converted = match row {
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                Err((line, format!("{e}")))
            }
            Ok(rec) => {
                let line = rec.position().map(|p| p.line()).unwrap_or(0);
                if names.is_empty() {
                    // No header and no `columns`: column_1, column_2, …
                    names = (1..=rec.len()).map(|i| format!("column_{i}")).collect();
                }
                if types_pending {
                    types_pending = false;
                    for (col, t) in &o.types {
                        match names.iter().position(|n| n == col) {
                            Some(i) => {
                                types.insert(i, *t);
                            }
                            None => {
                                return Err(TaskError::Fatal(format!(
                                    "`types` names column `{col}`, which {} does not have (columns: {})",
                                    o.path,
                                    names.join(", ")
                                )))
                            }
                        }
                    }
                }
                if rec.len() != names.len() {
                    Err((
                        line,
                        format!("expected {} fields, found {}", names.len(), rec.len()),
                    ))
                } else {
                    let mut obj = Map::with_capacity(names.len());
                    let mut err = None;
                    for (i, (name, field)) in names.iter().zip(rec.iter()).enumerate() {
                        let v = match types.get(&i) {
                            Some(t) => match t.convert(field, &o.list_separator) {
                                Ok(v) => v,
                                Err(e) => {
                                    err = Some((line, format!("column `{name}`: {e}")));
                                    break;
                                }
                            },
                            None => Value::String(field.to_string()),
                        };
                        obj.insert(name.clone(), v);
                    }
                    match err {
                        Some(e) => Err(e),
                        None => Ok(Value::Object(obj)),
                    }
                }
            }
        };
        match converted {
            Ok(v) => out.records.push(v),
            Err((line, reason)) if o.skip_bad => {
                out.skipped += 1;
                if out.skipped <= LOGGED_BAD_ROWS {
                    log.warn(&format!(
                        "{} line {line}: skipped bad row: {reason}",
                        o.path
                    ));
                }
            }
            Err((line, reason)) => {
                return Err(TaskError::Fatal(format!(
                "{} line {line}: bad row: {reason} (set on_bad_row = \"skip\" to skip such rows)",
                o.path
            )))
            }
        }
    }
    Ok(out)
}

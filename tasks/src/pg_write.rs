//! `pg_write`: writes records into a PostgreSQL table, one transaction per batch.
//!
//! Keys: `connection` (default `pg_default`, a `postgres://` URI), `table` (required,
//! `name` or `schema.name`), `records` (required, array of objects), `mode` (`insert` |
//! `upsert` | `copy`), `conflict_key` (columns; required by `upsert`), `columns` (table
//! column → record field path, or a list of names; default: the records' top-level
//! fields), `json_column` (stores the whole record as JSONB), `create_table` (bool),
//! `batch_size` (rows per transaction; 1000, or 50,000 for `copy`).
//!
//! `insert` and `upsert` send each batch as one JSONB array expanded by
//! `jsonb_populate_recordset`, so PostgreSQL converts values with the table's own column
//! types; `copy` streams the batch with `COPY … FROM STDIN` (text format). A field a
//! record lacks is written as NULL. A value the column cannot take fails the try naming
//! the record's index (found by replaying the failed batch row by row, rolled back).
//! Names are always quoted identifiers, so they are case-sensitive and never SQL.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::Duration;

use serde_json::{json, Map, Value};
use sluice_core::KindKeys;
use sqlx::postgres::{PgConnection, PgDatabaseError};
use sqlx::{Connection, Executor};

use crate::es::lookup;
use crate::{opt_str, short, TaskContext, TaskError, TaskKind};

const DEFAULT_BATCH_SIZE: usize = 1000;
/// COPY streams rows cheaply; at 1,000 rows a batch the per-commit disk flush dominates
/// (a third of a plain COPY's speed), at 50,000 it runs at about two thirds.
const DEFAULT_COPY_BATCH_SIZE: usize = 50_000;
const CONNECT_ATTEMPTS: u32 = 5;

pub struct PgWrite;

#[async_trait::async_trait]
impl TaskKind for PgWrite {
    fn name(&self) -> &'static str {
        "pg_write"
    }

    fn keys(&self) -> KindKeys {
        KindKeys {
            allowed: &[
                "connection",
                "table",
                "records",
                "mode",
                "conflict_key",
                "columns",
                "json_column",
                "create_table",
                "batch_size",
            ],
            required: &["table", "records"],
        }
    }

    async fn run(&self, ctx: &TaskContext, args: Map<String, Value>) -> Result<Value, TaskError> {
        let records = match args.get("records") {
            Some(Value::Array(a)) => a,
            Some(other) => {
                return Err(TaskError::Fatal(format!(
                    "`records` must be an array of objects, got {}",
                    short(other)
                )))
            }
            None => return Err(TaskError::Fatal("`records` is required".into())),
        };
        if let Some(i) = records.iter().position(|r| !r.is_object()) {
            return Err(TaskError::Fatal(format!(
                "record {i} is not an object: {}",
                short(&records[i])
            )));
        }
        let plan = Plan::parse(&args, records)?;
        let conn_name = opt_str(&args, "connection")?.unwrap_or("pg_default");
        let conn = ctx.conns.get(conn_name)?;
        if !matches!(conn.conn_type.as_str(), "postgres" | "postgresql") {
            return Err(TaskError::Fatal(format!(
                "connection `{conn_name}` must be a postgres:// URI, got scheme `{}`",
                conn.conn_type
            )));
        }
        let server = conn.host_port(5432);
        tokio::select! {
            r = write_all(ctx, conn.uri(), &server, &plan, records) => r,
            _ = ctx.cancel.cancelled() => Err(TaskError::Cancelled),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Insert,
    Upsert,
    Copy,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Insert => "insert",
            Mode::Upsert => "upsert",
            Mode::Copy => "copy",
        }
    }
}

/// Where a column's value comes from.
enum Source {
    Field(String),
    WholeRecord,
}

struct Column {
    name: String,
    quoted: String,
    source: Source,
}

struct Plan {
    /// As the user wrote it, for messages and the result.
    table: String,
    /// Quoted, possibly schema-qualified.
    quoted_table: String,
    mode: Mode,
    columns: Vec<Column>,
    conflict_key: Vec<String>,
    create_table: bool,
    batch_size: usize,
}

/// `"name"`, with embedded quotes doubled. Names with NUL cannot be identifiers.
fn quote_ident(name: &str, what: &str) -> Result<String, TaskError> {
    if name.is_empty() {
        return Err(TaskError::Fatal(format!("{what}: empty name")));
    }
    if name.contains('\0') {
        return Err(TaskError::Fatal(format!(
            "{what} {name:?} contains a NUL character"
        )));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

fn string_list(args: &Map<String, Value>, key: &str) -> Result<Vec<String>, TaskError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    TaskError::Fatal(format!(
                        "`{key}` must list column names, found {}",
                        short(v)
                    ))
                })
            })
            .collect(),
        Some(other) => Err(TaskError::Fatal(format!(
            "`{key}` must be a list of column names, got {}",
            short(other)
        ))),
    }
}

impl Plan {
    fn parse(args: &Map<String, Value>, records: &[Value]) -> Result<Plan, TaskError> {
        let table = opt_str(args, "table")?
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| TaskError::Fatal("`table` must be a non-empty string".into()))?
            .to_string();
        let parts: Vec<&str> = table.split('.').collect();
        if parts.len() > 2 {
            return Err(TaskError::Fatal(format!(
                "`table` must be `name` or `schema.name`, got {table:?}"
            )));
        }
        let quoted_table = parts
            .iter()
            .map(|p| quote_ident(p, "`table`"))
            .collect::<Result<Vec<_>, _>>()?
            .join(".");
        let mode = match opt_str(args, "mode")?.unwrap_or("insert") {
            "insert" => Mode::Insert,
            "upsert" => Mode::Upsert,
            "copy" => Mode::Copy,
            other => {
                return Err(TaskError::Fatal(format!(
                    "`mode` must be \"insert\", \"upsert\" or \"copy\", got {other:?}"
                )))
            }
        };
        let conflict_key = string_list(args, "conflict_key")?;
        if mode == Mode::Upsert && conflict_key.is_empty() {
            return Err(TaskError::Fatal(
                "`mode = \"upsert\"` needs `conflict_key`: the columns of a unique key".into(),
            ));
        }
        if mode == Mode::Copy
            && !conflict_key.is_empty()
            && !matches!(args.get("create_table"), Some(Value::Bool(true)))
        {
            return Err(TaskError::Fatal(
                "`mode = \"copy\"` only inserts; use `mode = \"upsert\"` with `conflict_key`"
                    .into(),
            ));
        }
        let json_column = opt_str(args, "json_column")?.map(str::to_string);
        let mut columns: Vec<Column> = Vec::new();
        fn push(columns: &mut Vec<Column>, name: String, source: Source) -> Result<(), TaskError> {
            let quoted = quote_ident(&name, "column")?;
            columns.push(Column {
                name,
                quoted,
                source,
            });
            Ok(())
        }
        match args.get("columns") {
            Some(Value::Object(m)) => {
                for (col, path) in m {
                    let path = path.as_str().filter(|p| !p.is_empty()).ok_or_else(|| {
                        TaskError::Fatal(format!(
                            "`columns.{col}` must be a record field path (e.g. \"user.id\"), got {}",
                            short(path)
                        ))
                    })?;
                    push(&mut columns, col.clone(), Source::Field(path.to_string()))?;
                }
            }
            Some(Value::Array(_)) => {
                for col in string_list(args, "columns")? {
                    push(&mut columns, col.clone(), Source::Field(col))?;
                }
            }
            None | Some(Value::Null) => {
                // With a JSON column and no mapping, the record goes there whole.
                if json_column.is_none() {
                    let mut seen = HashSet::new();
                    for r in records {
                        for k in r.as_object().into_iter().flat_map(|o| o.keys()) {
                            if seen.insert(k.as_str()) {
                                push(&mut columns, k.clone(), Source::Field(k.clone()))?;
                            }
                        }
                    }
                }
            }
            Some(other) => {
                return Err(TaskError::Fatal(format!(
                    "`columns` must map column names to record fields, got {}",
                    short(other)
                )))
            }
        }
        if let Some(j) = json_column {
            if columns.iter().any(|c| c.name == j) {
                return Err(TaskError::Fatal(format!(
                    "`json_column` {j:?} is also a mapped column"
                )));
            }
            push(&mut columns, j, Source::WholeRecord)?;
        }
        if columns.is_empty() {
            return Err(TaskError::Fatal(
                "no columns to write: the records have no fields and neither `columns` nor `json_column` is set".into(),
            ));
        }
        for k in &conflict_key {
            if !columns.iter().any(|c| &c.name == k) {
                return Err(TaskError::Fatal(format!(
                    "`conflict_key` column {k:?} is not among the written columns ({})",
                    columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let create_table = match args.get("create_table") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(TaskError::Fatal(format!(
                    "`create_table` must be true or false, got {}",
                    short(other)
                )))
            }
        };
        let batch_size = match args.get("batch_size") {
            None | Some(Value::Null) if mode == Mode::Copy => DEFAULT_COPY_BATCH_SIZE,
            None | Some(Value::Null) => DEFAULT_BATCH_SIZE,
            Some(v) => v
                .as_u64()
                .filter(|n| *n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| {
                    TaskError::Fatal(format!(
                        "`batch_size` must be a positive integer, got {}",
                        short(v)
                    ))
                })?,
        };
        Ok(Plan {
            table,
            quoted_table,
            mode,
            columns,
            conflict_key,
            create_table,
            batch_size,
        })
    }

    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| c.quoted.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn value<'a>(&self, col: &Column, record: &'a Value) -> Option<&'a Value> {
        match &col.source {
            Source::Field(path) => lookup(record, path),
            Source::WholeRecord => Some(record),
        }
    }

    /// `INSERT … SELECT … FROM jsonb_populate_recordset(NULL::table, $1)`: PostgreSQL
    /// converts each JSON value with the column's own input rules.
    fn insert_sql(&self) -> String {
        let cols = self.column_list();
        let mut sql = format!(
            "INSERT INTO {t} ({cols}) SELECT {cols} FROM jsonb_populate_recordset(NULL::{t}, $1::text::jsonb)",
            t = self.quoted_table
        );
        if self.mode == Mode::Upsert {
            let keys: Vec<String> = self
                .conflict_key
                .iter()
                .map(|k| quote_ident(k, "column").expect("checked in parse"))
                .collect();
            let updates: Vec<String> = self
                .columns
                .iter()
                .filter(|c| !self.conflict_key.contains(&c.name))
                .map(|c| format!("{q} = EXCLUDED.{q}", q = c.quoted))
                .collect();
            sql.push_str(&format!(" ON CONFLICT ({}) DO ", keys.join(", ")));
            if updates.is_empty() {
                sql.push_str("NOTHING");
            } else {
                sql.push_str("UPDATE SET ");
                sql.push_str(&updates.join(", "));
            }
        }
        sql
    }

    /// The JSON array of `{column: value}` objects for `rows`.
    fn json_rows(&self, rows: &[&Value]) -> Result<String, TaskError> {
        let mut out = Vec::with_capacity(rows.len() * 64);
        out.push(b'[');
        for (n, r) in rows.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.push(b'{');
            for (k, c) in self.columns.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                let v = self.value(c, r).unwrap_or(&Value::Null);
                serde_json::to_writer(&mut out, &c.name)
                    .and_then(|_| {
                        out.push(b':');
                        serde_json::to_writer(&mut out, v)
                    })
                    .map_err(|e| TaskError::Fatal(format!("cannot serialize a record: {e}")))?;
            }
            out.push(b'}');
        }
        out.push(b']');
        String::from_utf8(out).map_err(|e| TaskError::Fatal(format!("cannot serialize: {e}")))
    }

    /// `COPY` text-format lines for `rows`.
    fn copy_rows(&self, rows: &[&Value]) -> Vec<u8> {
        let mut out = Vec::with_capacity(rows.len() * 64);
        for r in rows {
            for (k, c) in self.columns.iter().enumerate() {
                if k > 0 {
                    out.push(b'\t');
                }
                match self.value(c, r) {
                    None | Some(Value::Null) => out.extend_from_slice(b"\\N"),
                    Some(Value::String(s)) => copy_escape(&mut out, s),
                    Some(Value::Bool(b)) => out.push(if *b { b't' } else { b'f' }),
                    Some(Value::Number(n)) => {
                        let _ = write!(out, "{n}");
                    }
                    Some(v) => copy_escape(&mut out, &v.to_string()),
                }
            }
            out.push(b'\n');
        }
        out
    }
}

/// Escapes a value for COPY's text format.
fn copy_escape(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(b),
        }
    }
}

/// The column type `create_table` gives a JSON value.
fn infer_type(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() => "bigint",
        Value::Number(_) => "double precision",
        Value::String(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => "timestamptz",
        Value::String(_) | Value::Null => "text",
        Value::Object(_) | Value::Array(_) => "jsonb",
    }
}

fn db_error(e: &sqlx::Error) -> Option<&PgDatabaseError> {
    match e {
        sqlx::Error::Database(d) => d.try_downcast_ref::<PgDatabaseError>(),
        _ => None,
    }
}

/// A PostgreSQL error as one line: message, detail and where.
fn describe(e: &sqlx::Error) -> String {
    match db_error(e) {
        Some(d) => {
            let mut s = format!("{} (SQLSTATE {})", d.message(), d.code());
            if let Some(det) = d.detail() {
                s.push_str(&format!("; {det}"));
            }
            if let Some(w) = d.r#where() {
                s.push_str(&format!("; {}", w.lines().next().unwrap_or(w)));
            }
            s
        }
        None => e.to_string(),
    }
}

/// Whether retrying the try may help: lost connections, serialization failures,
/// shutdowns, resource limits. Data, syntax and permission errors will not go away.
fn retryable(e: &sqlx::Error) -> bool {
    match db_error(e) {
        Some(d) => matches!(&d.code()[..2], "08" | "40" | "53" | "57" | "58"),
        None => !matches!(e, sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_)),
    }
}

fn classify(e: &sqlx::Error, msg: String) -> TaskError {
    if retryable(e) {
        TaskError::Failed(msg)
    } else {
        TaskError::Fatal(msg)
    }
}

async fn connect(ctx: &TaskContext, uri: &str, server: &str) -> Result<PgConnection, TaskError> {
    let mut last = String::new();
    for attempt in 0..CONNECT_ATTEMPTS {
        if attempt > 0 {
            let wait =
                sluice_core::backoff(attempt, Duration::from_millis(250), Duration::from_secs(8));
            tokio::time::sleep(wait).await;
        }
        match PgConnection::connect(uri).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                // Wrong password, missing database: retrying cannot help.
                if db_error(&e).is_some() && !retryable(&e) {
                    return Err(TaskError::Fatal(format!(
                        "PostgreSQL at {server} refused the connection: {}",
                        describe(&e)
                    )));
                }
                last = describe(&e);
                ctx.log.warn(&format!(
                    "connecting to PostgreSQL at {server} failed (attempt {}/{CONNECT_ATTEMPTS}): {last}",
                    attempt + 1
                ));
            }
        }
    }
    Err(TaskError::Failed(format!(
        "PostgreSQL at {server} is unreachable after {CONNECT_ATTEMPTS} attempts: {last}"
    )))
}

async fn write_all(
    ctx: &TaskContext,
    uri: &str,
    server: &str,
    plan: &Plan,
    records: &[Value],
) -> Result<Value, TaskError> {
    let mut conn = connect(ctx, uri, server).await?;
    if plan.create_table {
        create_table(ctx, &mut conn, plan, records).await?;
    }
    ctx.log.info(&format!(
        "writing {} records into {} on {server} ({}, {} per transaction)",
        records.len(),
        plan.table,
        plan.mode.name(),
        plan.batch_size
    ));
    let insert_sql = plan.insert_sql();
    let copy_sql = format!(
        "COPY {} ({}) FROM STDIN",
        plan.quoted_table,
        plan.column_list()
    );
    let mut rows_written = 0u64;
    let mut batches = 0u64;
    // Positions in `records` of each batch's rows: an upsert batch keeps only the last
    // record of each key, since one statement cannot update a row twice.
    let batch_positions: Vec<Vec<usize>> = records
        .chunks(plan.batch_size)
        .enumerate()
        .map(|(b, chunk)| {
            let first = b * plan.batch_size;
            if plan.mode == Mode::Upsert {
                dedupe_by_key(plan, chunk)
                    .into_iter()
                    .map(|i| first + i)
                    .collect()
            } else {
                (first..first + chunk.len()).collect()
            }
        })
        .collect();
    let prepare = |positions: &[usize]| -> Result<Vec<u8>, TaskError> {
        let rows: Vec<&Value> = positions.iter().map(|&i| &records[i]).collect();
        if plan.mode == Mode::Copy {
            Ok(plan.copy_rows(&rows))
        } else {
            plan.json_rows(&rows).map(String::into_bytes)
        }
    };
    let mut next = batch_positions.first().map(|p| prepare(p));
    for (b, positions) in batch_positions.iter().enumerate() {
        let first = b * plan.batch_size;
        let chunk_len = records.len().min(first + plan.batch_size) - first;
        let data = next.take().expect("prepared before its turn")?;
        let bytes = data.len() as u64;
        let send = async {
            let mut tx = conn.begin().await?;
            let n = if plan.mode == Mode::Copy {
                let mut copy = tx.copy_in_raw(&copy_sql).await?;
                copy.send(data).await?;
                copy.finish().await?
            } else {
                let data =
                    String::from_utf8(data).map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
                let r = sqlx::query(&insert_sql)
                    .bind(data)
                    .execute(&mut *tx)
                    .await?;
                r.rows_affected()
            };
            tx.commit().await?;
            Ok::<_, sqlx::Error>(n)
        };
        // The next batch is serialized while PostgreSQL works on this one.
        let (result, upcoming) = tokio::join!(send, async {
            batch_positions.get(b + 1).map(|p| prepare(p))
        });
        next = upcoming;
        match result {
            Ok(n) => {
                rows_written += n;
                batches += 1;
                ctx.metrics.wrote(n, bytes);
            }
            Err(e) => {
                let msg = describe(&e);
                // A data or constraint error: find the record that causes it.
                let is_data = db_error(&e).is_some_and(|d| matches!(&d.code()[..2], "22" | "23"));
                if is_data {
                    if let Some(found) =
                        find_bad_record(&mut conn, plan, &insert_sql, records, positions).await
                    {
                        return Err(TaskError::Fatal(format!(
                            "writing into {}: {found} ({} rows written by earlier batches)",
                            plan.table, rows_written
                        )));
                    }
                }
                let hint = match db_error(&e).map(|d| d.code()) {
                    Some("42P01") => " (set `create_table = true` to create it)",
                    Some("42P10") => {
                        " (`conflict_key` must be the columns of a unique index or primary key)"
                    }
                    _ => "",
                };
                return Err(classify(
                    &e,
                    format!(
                        "writing records {first}..{} into {} on {server} failed: {msg}{hint} ({} rows written by earlier batches)",
                        first + chunk_len,
                        plan.table,
                        rows_written
                    ),
                ));
            }
        }
    }
    ctx.log.info(&format!(
        "wrote {rows_written} rows into {} in {batches} batches",
        plan.table
    ));
    Ok(json!({
        "table": plan.table,
        "rows_written": rows_written,
        "batches": batches,
        "mode": plan.mode.name(),
    }))
}

/// Indexes (within `chunk`) of the last record of each conflict key, in order.
fn dedupe_by_key(plan: &Plan, chunk: &[Value]) -> Vec<usize> {
    let key_cols: Vec<&Column> = plan
        .conflict_key
        .iter()
        .filter_map(|k| plan.columns.iter().find(|c| &c.name == k))
        .collect();
    let mut last: HashMap<String, usize> = HashMap::with_capacity(chunk.len());
    for (i, r) in chunk.iter().enumerate() {
        let key: Vec<&Value> = key_cols
            .iter()
            .map(|c| plan.value(c, r).unwrap_or(&Value::Null))
            .collect();
        last.insert(serde_json::to_string(&key).unwrap_or_default(), i);
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();
    keep
}

/// Replays a failed batch one row at a time inside a transaction that is rolled back,
/// and describes the first row PostgreSQL rejects.
async fn find_bad_record(
    conn: &mut PgConnection,
    plan: &Plan,
    insert_sql: &str,
    records: &[Value],
    positions: &[usize],
) -> Option<String> {
    let mut tx = conn.begin().await.ok()?;
    let mut found = None;
    for &i in positions {
        let data = plan.json_rows(&[&records[i]]).ok()?;
        tx.execute("SAVEPOINT sluice_row").await.ok()?;
        if let Err(e) = sqlx::query(insert_sql).bind(data).execute(&mut *tx).await {
            found = Some(format!("record {i} was rejected: {}", describe(&e)));
            break;
        }
        tx.execute("RELEASE SAVEPOINT sluice_row").await.ok()?;
    }
    let _ = tx.rollback().await;
    found
}

async fn create_table(
    ctx: &TaskContext,
    conn: &mut PgConnection,
    plan: &Plan,
    records: &[Value],
) -> Result<(), TaskError> {
    let mut defs = Vec::new();
    for c in &plan.columns {
        let ty = match c.source {
            Source::WholeRecord => "jsonb",
            // The first non-null value decides; a column with none is text.
            Source::Field(_) => records
                .iter()
                .filter_map(|r| plan.value(c, r))
                .find(|v| !v.is_null())
                .map(infer_type)
                .unwrap_or("text"),
        };
        defs.push(format!("{} {ty}", c.quoted));
    }
    if !plan.conflict_key.is_empty() {
        let keys: Vec<String> = plan
            .conflict_key
            .iter()
            .map(|k| quote_ident(k, "column"))
            .collect::<Result<_, _>>()?;
        defs.push(format!("PRIMARY KEY ({})", keys.join(", ")));
    }
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        plan.quoted_table,
        defs.join(", ")
    );
    conn.execute(sql.as_str()).await.map_err(|e| {
        classify(
            &e,
            format!("creating table {} failed: {}", plan.table, describe(&e)),
        )
    })?;
    ctx.log
        .info(&format!("ensured table {} exists: {sql}", plan.table));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_nul_rejected() {
        assert_eq!(quote_ident("a\"b", "x").unwrap(), "\"a\"\"b\"");
        assert!(quote_ident("a\0b", "x").is_err());
        assert!(quote_ident("", "x").is_err());
    }

    #[test]
    fn copy_text_escapes_special_characters() {
        let mut out = Vec::new();
        copy_escape(&mut out, "a\tb\\c\nd");
        assert_eq!(out, b"a\\tb\\\\c\\nd");
    }

    #[test]
    fn types_are_inferred_simply() {
        assert_eq!(infer_type(&json!(1)), "bigint");
        assert_eq!(infer_type(&json!(1.5)), "double precision");
        assert_eq!(infer_type(&json!(true)), "boolean");
        assert_eq!(infer_type(&json!("2024-08-01T00:00:00Z")), "timestamptz");
        assert_eq!(infer_type(&json!("x")), "text");
        assert_eq!(infer_type(&json!({"a": 1})), "jsonb");
    }
}

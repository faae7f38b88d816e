//! `es_index`: bulk-indexes records into Elasticsearch (7, 8) or OpenSearch over the
//! REST `_bulk` API.
//!
//! Keys: `connection` (default `es_default`; `http(s)://user:pass@host:port`, basic auth
//! from the login/password, an `api_key` query parameter becomes an `ApiKey` header),
//! `index` (required), `records` (required, array of objects), `id_field` (dotted path;
//! when omitted, ids are derived from the run, the task and the record's position, so a
//! retry or re-run overwrites instead of duplicating), `op_type` (`index` | `create` |
//! `update`), `batch_size` (500), `batch_bytes` (5 MiB), `parallelism` (2),
//! `create_index` (`{ mappings, settings }`, applied when the index is missing),
//! `refresh` (false | true | "wait_for"), `pipeline`.
//!
//! Items rejected with 429/503 are resent with backoff; any other rejected item fails the
//! try with the record's position, id, error type and reason. `create` conflicts (409,
//! the document exists) count as `skipped`, so re-running a `create` task is harmless.

use std::ops::Range;
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sluice_core::KindKeys;

use crate::{opt_str, short, TaskContext, TaskError, TaskKind};

const DEFAULT_BATCH_SIZE: usize = 500;
const DEFAULT_BATCH_BYTES: usize = 5 * 1024 * 1024;
const DEFAULT_PARALLELISM: usize = 2;
/// Attempts of one HTTP request when the server is unreachable or answers 429/5xx.
const REQUEST_ATTEMPTS: u32 = 5;
/// Rounds of resending items the cluster rejected with 429/503.
const ITEM_ATTEMPTS: u32 = 8;
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(8);
/// Permanent item failures listed in the error message.
const LISTED_FAILURES: usize = 5;

pub struct EsIndex;

#[async_trait::async_trait]
impl TaskKind for EsIndex {
    fn name(&self) -> &'static str {
        "es_index"
    }

    fn keys(&self) -> KindKeys {
        KindKeys {
            allowed: &[
                "connection",
                "index",
                "records",
                "id_field",
                "id",
                "op_type",
                "batch_size",
                "batch_bytes",
                "parallelism",
                "create_index",
                "refresh",
                "pipeline",
            ],
            required: &["index", "records"],
        }
    }

    fn record_template_keys(&self) -> &'static [&'static str] {
        &["id"]
    }

    async fn run(&self, ctx: &TaskContext, args: Map<String, Value>) -> Result<Value, TaskError> {
        let opts = Options::parse(&args)?;
        let conn_name = opt_str(&args, "connection")?.unwrap_or("es_default");
        let es = Es::new(ctx.conns.get(conn_name)?)?;
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
        tokio::select! {
            r = index_all(ctx, &es, &opts, records) => r,
            _ = ctx.cancel.cancelled() => Err(TaskError::Cancelled),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum OpType {
    Index,
    Create,
    Update,
}

impl OpType {
    fn action(self) -> &'static str {
        match self {
            OpType::Index => "index",
            OpType::Create => "create",
            OpType::Update => "update",
        }
    }
}

struct Options {
    index: String,
    id_field: Option<String>,
    /// `id`: a template rendered per document with `record`.
    id_template: Option<String>,
    op_type: OpType,
    batch_size: usize,
    batch_bytes: usize,
    parallelism: usize,
    create_index: Option<Map<String, Value>>,
    /// `None`: no refresh; `Some("true")`: one `_refresh` at the end; `Some("wait_for")`.
    refresh: Option<&'static str>,
    pipeline: Option<String>,
}

fn positive(args: &Map<String, Value>, key: &str, default: usize) -> Result<usize, TaskError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|n| *n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| {
                TaskError::Fatal(format!(
                    "`{key}` must be a positive integer, got {}",
                    short(v)
                ))
            }),
    }
}

impl Options {
    fn parse(args: &Map<String, Value>) -> Result<Options, TaskError> {
        let index = opt_str(args, "index")?
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| TaskError::Fatal("`index` must be a non-empty string".into()))?
            .to_string();
        let op_type = match opt_str(args, "op_type")?.unwrap_or("index") {
            "index" => OpType::Index,
            "create" => OpType::Create,
            "update" => OpType::Update,
            other => {
                return Err(TaskError::Fatal(format!(
                    "`op_type` must be \"index\", \"create\" or \"update\", got {other:?}"
                )))
            }
        };
        let create_index = match args.get("create_index") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => {
                if let Some(k) = m.keys().find(|k| *k != "mappings" && *k != "settings") {
                    return Err(TaskError::Fatal(format!(
                        "`create_index` takes `mappings` and `settings`, not `{k}`"
                    )));
                }
                Some(m.clone())
            }
            Some(other) => {
                return Err(TaskError::Fatal(format!(
                    "`create_index` must be a table with `mappings` and/or `settings`, got {}",
                    short(other)
                )))
            }
        };
        let refresh = match args.get("refresh") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some("true"),
            Some(Value::String(s)) if s == "wait_for" => Some("wait_for"),
            Some(Value::String(s)) if s == "true" => Some("true"),
            Some(Value::String(s)) if s == "false" => None,
            Some(other) => {
                return Err(TaskError::Fatal(format!(
                    "`refresh` must be false, true or \"wait_for\", got {}",
                    short(other)
                )))
            }
        };
        Ok(Options {
            index,
            id_field: opt_str(args, "id_field")?
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            id_template: match (opt_str(args, "id")?, opt_str(args, "id_field")?) {
                (Some(_), Some(_)) => {
                    return Err(TaskError::Fatal(
                        "set either `id` (a template over `record`) or `id_field`, not both".into(),
                    ))
                }
                (id, _) => id.map(str::to_string),
            },
            op_type,
            batch_size: positive(args, "batch_size", DEFAULT_BATCH_SIZE)?,
            batch_bytes: positive(args, "batch_bytes", DEFAULT_BATCH_BYTES)?,
            parallelism: positive(args, "parallelism", DEFAULT_PARALLELISM)?,
            create_index,
            refresh,
            pipeline: opt_str(args, "pipeline")?.map(str::to_string),
        })
    }
}

/// Looks up a dotted path (`user.id`) in a record: a literal key containing dots wins,
/// then nested objects are walked.
pub(crate) fn lookup<'a>(record: &'a Value, path: &str) -> Option<&'a Value> {
    let obj = record.as_object()?;
    if let Some(v) = obj.get(path) {
        return Some(v);
    }
    let mut cur = record;
    for part in path.split('.') {
        cur = cur.as_object()?.get(part)?;
    }
    Some(cur)
}

/// One Elasticsearch endpoint: a client with auth and the base URL (without credentials,
/// so it can appear in messages).
struct Es {
    client: reqwest::Client,
    base: url::Url,
    auth: Option<Auth>,
}

enum Auth {
    Basic(String, Option<String>),
    /// The whole `Authorization` header value.
    ApiKey(String),
}

impl Es {
    fn new(conn: &crate::Connection) -> Result<Es, TaskError> {
        let scheme = match conn.conn_type.as_str() {
            "http" | "https" => conn.conn_type.as_str(),
            other => {
                return Err(TaskError::Fatal(format!(
                    "connection `{}` must be an http:// or https:// URI for Elasticsearch, got scheme `{other}`",
                    conn.name
                )))
            }
        };
        let host = conn
            .host
            .as_deref()
            .ok_or_else(|| TaskError::Fatal(format!("connection `{}` has no host", conn.name)))?;
        let port = conn
            .port
            .unwrap_or(if scheme == "https" { 443 } else { 9200 });
        // The connection's path is kept as a prefix, for clusters behind a proxy path.
        let path = conn.schema.as_deref().unwrap_or("");
        let base = url::Url::parse(&format!("{scheme}://{host}:{port}/{path}"))
            .map_err(|e| TaskError::Fatal(format!("connection `{}`: {e}", conn.name)))?;
        let auth = if let Some(key) = conn.extra.get("api_key") {
            Some(Auth::ApiKey(format!("ApiKey {key}")))
        } else {
            conn.login
                .clone()
                .map(|login| Auth::Basic(login, conn.password.clone()))
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| TaskError::Failed(format!("cannot build the HTTP client: {e}")))?;
        Ok(Es { client, base, auth })
    }

    /// The server, for messages: `http://host:9200`.
    fn server(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_string()
    }

    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> url::Url {
        let mut u = self.base.clone();
        {
            let mut p = u.path_segments_mut().expect("http URLs have paths");
            p.pop_if_empty();
            p.extend(segments);
        }
        if !query.is_empty() {
            u.query_pairs_mut().extend_pairs(query);
        }
        u
    }

    /// Sends a request, retrying with backoff while the server is unreachable or answers
    /// 429/502/503/504. Returns the final status and body.
    async fn send(
        &self,
        ctx: &TaskContext,
        method: reqwest::Method,
        url: url::Url,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<(u16, Vec<u8>), TaskError> {
        let what = format!("{method} {}", url.path());
        let mut last_err = String::new();
        for attempt in 0..REQUEST_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt - 1)).await;
            }
            let mut req = self.client.request(method.clone(), url.clone());
            match &self.auth {
                Some(Auth::Basic(user, pass)) => req = req.basic_auth(user, pass.as_ref()),
                Some(Auth::ApiKey(h)) => req = req.header(reqwest::header::AUTHORIZATION, h),
                None => {}
            }
            if let Some((ct, b)) = &body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, *ct)
                    .body(b.clone());
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let bytes = match resp.bytes().await {
                        Ok(b) => b.to_vec(),
                        Err(e) => {
                            last_err = format!("reading the response failed: {}", chain(&e));
                            ctx.log
                                .warn(&format!("{what} on {}: {last_err}", self.server()));
                            continue;
                        }
                    };
                    if matches!(status, 429 | 502 | 503 | 504) {
                        last_err = format!("HTTP {status}: {}", snippet(&bytes));
                        ctx.log.warn(&format!(
                            "{what} on {} answered {status}; retrying",
                            self.server()
                        ));
                        continue;
                    }
                    return Ok((status, bytes));
                }
                Err(e) => {
                    last_err = chain(&e);
                    ctx.log.warn(&format!(
                        "{what} on {} failed (attempt {}/{REQUEST_ATTEMPTS}): {last_err}",
                        self.server(),
                        attempt + 1
                    ));
                }
            }
        }
        Err(TaskError::Failed(format!(
            "Elasticsearch at {} did not answer {what} after {REQUEST_ATTEMPTS} attempts: {last_err}",
            self.server()
        )))
    }
}

fn backoff(n: u32) -> Duration {
    sluice_core::backoff(n + 1, BACKOFF_START, BACKOFF_CAP)
}

/// An error with its sources ("error sending request: connection refused").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

/// At most 200 characters of a body, for messages.
fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s.to_string()
    }
}

/// The `error.type` and `error.reason` of an error response.
fn error_of(body: &[u8]) -> (String, String) {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            let e = &v["error"];
            let ty = e["type"].as_str().unwrap_or("").to_string();
            let reason = e["reason"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| snippet(body));
            (ty, reason)
        }
        Err(_) => (String::new(), snippet(body)),
    }
}

/// One `_bulk` request's documents: the NDJSON body and, per document, its lines' byte
/// range, its position in `records` and its id.
struct Batch {
    number: usize,
    body: Vec<u8>,
    items: Vec<BatchItem>,
}

struct BatchItem {
    lines: Range<usize>,
    position: usize,
    id: String,
}

/// Totals over all batches.
#[derive(Default, Debug)]
struct Counts {
    indexed: u64,
    created: u64,
    updated: u64,
    skipped: u64,
}

async fn index_all(
    ctx: &TaskContext,
    es: &Es,
    opts: &Options,
    records: &[Value],
) -> Result<Value, TaskError> {
    let ids = document_ids(ctx, opts, records)?;
    if let Some(spec) = &opts.create_index {
        ensure_index(ctx, es, &opts.index, spec).await?;
    }
    ctx.log.info(&format!(
        "indexing {} records into `{}` on {} ({} per batch, {} in parallel)",
        records.len(),
        opts.index,
        es.server(),
        opts.batch_size,
        opts.parallelism
    ));
    let mut query: Vec<(&str, &str)> = Vec::new();
    if opts.refresh == Some("wait_for") {
        query.push(("refresh", "wait_for"));
    }
    if let Some(p) = &opts.pipeline {
        query.push(("pipeline", p));
    }
    let bulk_url = es.url(&[&opts.index, "_bulk"], &query);

    let batches = Batches {
        records,
        ids: &ids,
        opts,
        next: 0,
        number: 0,
    };
    let mut results = futures::stream::iter(batches)
        .map(|b| {
            let url = bulk_url.clone();
            async move {
                let b = b?;
                send_batch(ctx, es, opts, url, b).await
            }
        })
        .buffer_unordered(opts.parallelism);
    let mut total = Counts::default();
    let mut batches_done = 0u64;
    // The first failure stops the task; dropping the stream abandons batches in flight.
    while let Some(r) = results.next().await {
        let c = r?;
        total.indexed += c.indexed;
        total.created += c.created;
        total.updated += c.updated;
        total.skipped += c.skipped;
        batches_done += 1;
    }
    drop(results);
    if opts.refresh == Some("true") {
        let url = es.url(&[&opts.index, "_refresh"], &[]);
        let (status, body) = es.send(ctx, reqwest::Method::POST, url, None).await?;
        if !(200..300).contains(&status) {
            let (ty, reason) = error_of(&body);
            return Err(TaskError::Failed(format!(
                "refreshing `{}` on {} failed with HTTP {status}: {ty} {reason}",
                opts.index,
                es.server()
            )));
        }
    }
    ctx.log.info(&format!(
        "indexed {} documents into `{}` ({} created, {} updated, {} skipped) in {batches_done} batches",
        total.indexed, opts.index, total.created, total.updated, total.skipped
    ));
    Ok(json!({
        "index": opts.index,
        "indexed": total.indexed,
        "created": total.created,
        "updated": total.updated,
        "skipped": total.skipped,
        "failed": 0,
        "batches": batches_done,
    }))
}

/// Every record's document id, checked before anything is sent so bad input fails
/// without a partial write.
fn document_ids(
    ctx: &TaskContext,
    opts: &Options,
    records: &[Value],
) -> Result<Vec<String>, TaskError> {
    let mut ids = Vec::with_capacity(records.len());
    let template = match &opts.id_template {
        Some(src) => Some(
            sluice_core::RecordTemplate::compile(src)
                .map_err(|e| TaskError::Fatal(format!("`id`: {e}")))?,
        ),
        None => None,
    };
    for (i, r) in records.iter().enumerate() {
        if !r.is_object() {
            return Err(TaskError::Fatal(format!(
                "record {i} is not an object (documents must be JSON objects): {}",
                short(r)
            )));
        }
        if let Some(t) = &template {
            let id = match ctx.render_for_record(t, "id", i, r)? {
                Value::String(s) if !s.trim().is_empty() => s,
                Value::Number(n) => n.to_string(),
                other => {
                    return Err(TaskError::Fatal(format!(
                        "record {i}: `id` rendered {}, not a non-empty string or number",
                        short(&other)
                    )))
                }
            };
            ids.push(id);
            continue;
        }
        let id = match &opts.id_field {
            Some(f) => match lookup(r, f) {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                None | Some(Value::Null) => {
                    return Err(TaskError::Fatal(format!(
                        "record {i} has no `{f}` (id_field)"
                    )))
                }
                Some(other) => {
                    return Err(TaskError::Fatal(format!(
                    "record {i}: `{f}` (id_field) must be a non-empty string or a number, got {}",
                    short(other)
                )))
                }
            },
            // Derived from where the record comes from, so a retry or a re-run of this
            // run overwrites the documents it wrote before instead of duplicating them.
            None => format!(
                "{}.{}{}.{}.{}",
                ctx.dag_id,
                ctx.task_id,
                if ctx.map_index >= 0 {
                    format!("[{}]", ctx.map_index)
                } else {
                    String::new()
                },
                ctx.run_id,
                i
            ),
        };
        if id.len() > 512 {
            return Err(TaskError::Fatal(format!(
                "record {i}: document id is longer than 512 bytes (Elasticsearch's limit)"
            )));
        }
        ids.push(id);
    }
    Ok(ids)
}

/// Builds batches lazily, so only the batches in flight are held serialized.
struct Batches<'a> {
    records: &'a [Value],
    ids: &'a [String],
    opts: &'a Options,
    next: usize,
    number: usize,
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.records.len() {
            return None;
        }
        self.number += 1;
        let mut batch = Batch {
            number: self.number,
            body: Vec::new(),
            items: Vec::new(),
        };
        while self.next < self.records.len() && batch.items.len() < self.opts.batch_size {
            let i = self.next;
            let start = batch.body.len();
            if let Err(e) = write_item(
                &mut batch.body,
                self.opts.op_type,
                &self.ids[i],
                &self.records[i],
            ) {
                return Some(Err(TaskError::Fatal(format!(
                    "record {i} cannot be serialized: {e}"
                ))));
            }
            // A document that would overflow the byte budget starts the next batch
            // (unless it is alone: oversized documents go in a batch of their own).
            if batch.body.len() > self.opts.batch_bytes && !batch.items.is_empty() {
                batch.body.truncate(start);
                break;
            }
            batch.items.push(BatchItem {
                lines: start..batch.body.len(),
                position: i,
                id: self.ids[i].clone(),
            });
            self.next += 1;
        }
        Some(Ok(batch))
    }
}

fn write_item(
    out: &mut Vec<u8>,
    op: OpType,
    id: &str,
    record: &Value,
) -> Result<(), serde_json::Error> {
    let meta = match op {
        // Retries inside the cluster cover concurrent updates of the same document.
        OpType::Update => json!({ "update": { "_id": id, "retry_on_conflict": 3 } }),
        _ => json!({ op.action(): { "_id": id } }),
    };
    serde_json::to_writer(&mut *out, &meta)?;
    out.push(b'\n');
    if op == OpType::Update {
        serde_json::to_writer(&mut *out, &json!({ "doc": record, "doc_as_upsert": true }))?;
    } else {
        serde_json::to_writer(&mut *out, record)?;
    }
    out.push(b'\n');
    Ok(())
}

#[derive(Deserialize)]
struct BulkResponse {
    #[serde(default)]
    items: Vec<Map<String, Value>>,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    result: Option<String>,
    #[serde(default)]
    error: Option<Value>,
}

/// Sends one batch; items rejected with 429/503 are resent (alone) with backoff.
async fn send_batch(
    ctx: &TaskContext,
    es: &Es,
    opts: &Options,
    url: url::Url,
    batch: Batch,
) -> Result<Counts, TaskError> {
    let mut counts = Counts::default();
    let mut pending: Vec<usize> = (0..batch.items.len()).collect();
    let mut round = 0u32;
    loop {
        let body: Vec<u8> = if pending.len() == batch.items.len() {
            batch.body.clone()
        } else {
            pending
                .iter()
                .flat_map(|&k| batch.body[batch.items[k].lines.clone()].iter().copied())
                .collect()
        };
        let body_len = body.len() as u64;
        // Documents of a batch whose request or response failed were not indexed.
        let whole_batch_failed = |e: TaskError| {
            if !matches!(e, TaskError::Cancelled) {
                ctx.metrics.failed(pending.len() as u64);
            }
            e
        };
        let (status, resp) = es
            .send(
                ctx,
                reqwest::Method::POST,
                url.clone(),
                Some(("application/x-ndjson", body)),
            )
            .await
            .map_err(whole_batch_failed)?;
        if !(200..300).contains(&status) {
            let (ty, reason) = error_of(&resp);
            let msg = format!(
                "bulk request to `{}` on {} failed with HTTP {status}: {ty} {reason}",
                opts.index,
                es.server()
            );
            // Other 4xx (bad credentials, missing index, bad pipeline) will not fix
            // themselves on a retry; 5xx might.
            return Err(whole_batch_failed(if status >= 500 {
                TaskError::Failed(msg)
            } else {
                TaskError::Fatal(msg)
            }));
        }
        let parsed: BulkResponse = serde_json::from_slice(&resp).map_err(|e| {
            whole_batch_failed(TaskError::Failed(format!(
                "bulk response from {} is not valid JSON ({e}): {}",
                es.server(),
                snippet(&resp)
            )))
        })?;
        if parsed.items.len() != pending.len() {
            return Err(whole_batch_failed(TaskError::Failed(format!(
                "bulk response from {} lists {} items for {} documents sent: {}",
                es.server(),
                parsed.items.len(),
                pending.len(),
                snippet(&resp)
            ))));
        }
        let mut retry = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        let mut failed = 0usize;
        let mut ok_docs = 0u64;
        let mut ok_bytes = 0u64;
        for (&k, item) in pending.iter().zip(parsed.items) {
            let doc = &batch.items[k];
            let Some(item) = item.into_iter().next().map(|(_, v)| v) else {
                return Err(whole_batch_failed(TaskError::Failed(format!(
                    "bulk response from {} has an empty item for record {}",
                    es.server(),
                    doc.position
                ))));
            };
            let item: BulkItem = serde_json::from_value(item).map_err(|e| {
                whole_batch_failed(TaskError::Failed(format!(
                    "bulk response item from {} for record {} is malformed: {e}",
                    es.server(),
                    doc.position
                )))
            })?;
            match item.status {
                200..=299 => {
                    counts.indexed += 1;
                    ok_docs += 1;
                    ok_bytes += doc.lines.len() as u64;
                    match item.result.as_deref() {
                        Some("created") => counts.created += 1,
                        Some("updated") => counts.updated += 1,
                        Some(_) => {}
                        // ES before 5 (and some proxies) report only the status.
                        None if item.status == 201 => counts.created += 1,
                        None => counts.updated += 1,
                    }
                }
                409 if opts.op_type == OpType::Create => counts.skipped += 1,
                429 | 503 => retry.push(k),
                status => {
                    failed += 1;
                    if failures.len() < LISTED_FAILURES {
                        let err = item.error.unwrap_or(Value::Null);
                        let ty = err["type"].as_str().unwrap_or("error");
                        let reason = err["reason"]
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| short(&err));
                        failures.push(format!(
                            "record {} (id {:?}): HTTP {status} {ty}: {reason}",
                            doc.position, doc.id
                        ));
                    }
                }
            }
        }
        ctx.metrics.wrote(ok_docs, ok_bytes);
        ctx.metrics.failed(failed as u64);
        if failed > 0 {
            return Err(TaskError::Fatal(format!(
                "{failed} document(s) of batch {} were rejected by `{}` on {}; first {}: {}",
                batch.number,
                opts.index,
                es.server(),
                failures.len(),
                failures.join("; ")
            )));
        }
        if retry.is_empty() {
            if round > 0 {
                ctx.log.info(&format!(
                    "batch {} fully indexed after {round} resend(s)",
                    batch.number
                ));
            }
            return Ok(counts);
        }
        round += 1;
        if round >= ITEM_ATTEMPTS {
            ctx.metrics.failed(retry.len() as u64);
            return Err(TaskError::Failed(format!(
                "{} document(s) of batch {} were still rejected as overloaded (429/503) by {} after {ITEM_ATTEMPTS} attempts",
                retry.len(),
                batch.number,
                es.server()
            )));
        }
        let wait = backoff(round - 1);
        ctx.log.warn(&format!(
            "batch {}: {} of {} document(s) rejected as overloaded (429/503); resending in {wait:?} (body was {body_len} bytes)",
            batch.number,
            retry.len(),
            pending.len()
        ));
        tokio::time::sleep(wait).await;
        pending = retry;
    }
}

/// Creates the index with `spec` (mappings, settings) when it does not exist. A
/// concurrent creator winning the race is fine.
async fn ensure_index(
    ctx: &TaskContext,
    es: &Es,
    index: &str,
    spec: &Map<String, Value>,
) -> Result<(), TaskError> {
    let url = es.url(&[index], &[]);
    let (status, _) = es
        .send(ctx, reqwest::Method::HEAD, url.clone(), None)
        .await?;
    match status {
        200 => return Ok(()),
        404 => {}
        other => {
            return Err(TaskError::Failed(format!(
                "checking whether index `{index}` exists on {} answered HTTP {other}",
                es.server()
            )))
        }
    }
    let body = serde_json::to_vec(&Value::Object(spec.clone()))
        .map_err(|e| TaskError::Fatal(format!("`create_index` cannot be serialized: {e}")))?;
    let (status, resp) = es
        .send(
            ctx,
            reqwest::Method::PUT,
            url,
            Some(("application/json", body)),
        )
        .await?;
    if (200..300).contains(&status) {
        ctx.log
            .info(&format!("created index `{index}` on {}", es.server()));
        return Ok(());
    }
    let (ty, reason) = error_of(&resp);
    if ty == "resource_already_exists_exception" {
        return Ok(());
    }
    let msg = format!(
        "creating index `{index}` on {} failed with HTTP {status}: {ty}: {reason}",
        es.server()
    );
    Err(if status >= 500 {
        TaskError::Failed(msg)
    } else {
        TaskError::Fatal(msg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_walks_dotted_paths() {
        let r = json!({"user": {"id": 7}, "a.b": 1});
        assert_eq!(lookup(&r, "user.id"), Some(&json!(7)));
        assert_eq!(lookup(&r, "a.b"), Some(&json!(1)));
        assert_eq!(lookup(&r, "user.name"), None);
    }
}

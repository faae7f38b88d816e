//! `kafka_consume`: reads a batch of records as a member of a consumer group.
//!
//! Offsets are Sluice task state, not Kafka commits: a try proposes
//! `offset/{group}/{topic}/{partition}` = next offset for every partition it read, and
//! the executor commits those proposals only when the DAG run succeeds. A try never
//! commits to Kafka what it read, so a failed run (this task or any downstream one)
//! re-reads the same records next time. On assignment each partition is positioned at
//! its state offset when there is one, else at the group's committed Kafka offset, else
//! per `start` (auto.offset.reset). The offsets the state holds are also committed to
//! Kafka (asynchronously) once the next try is assigned its partitions, so lag tools
//! see the group's progress, one run behind.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::{json, Map, Value};
use sluice_core::KindKeys;

use super::{opt_u64, retry_blocking, topic_infos, Client, LogContext};
use crate::{opt_str, short, TaskContext, TaskError, TaskKind};

/// How long joining the group and getting partitions may take (tansu and Kafka both
/// take a few seconds).
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MAX_RECORDS: u64 = 10_000;
const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(10);
/// Longest single wait for a message, so stop conditions are checked often.
const TICK: Duration = Duration::from_millis(200);
/// Characters of a malformed payload quoted in the error.
const SNIPPET: usize = 200;

type Tp = (String, i32);

pub struct KafkaConsume;

/// The consumer's context: logging, plus positioning newly assigned partitions at the
/// offsets Sluice's state holds.
struct GroupContext {
    log: LogContext,
    state_offsets: HashMap<Tp, i64>,
    /// The current assignment, and a counter bumped on every change.
    assigned: Mutex<Vec<Tp>>,
    generation: AtomicU64,
}

impl ClientContext for GroupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.log.error(error, reason);
    }
}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let list = match rebalance {
            Rebalance::Assign(tpl) => {
                // Re-assign with explicit offsets: from the state where it has one,
                // else the group's committed offset (`Stored`, which falls back to
                // auto.offset.reset). Done here, before any fetch reaches the caller.
                let mut with_offsets = TopicPartitionList::new();
                let mut list = Vec::new();
                for e in tpl.elements() {
                    let tp = (e.topic().to_string(), e.partition());
                    let offset = self
                        .state_offsets
                        .get(&tp)
                        .map_or(Offset::Stored, |&o| Offset::Offset(o));
                    if let Err(err) = with_offsets.add_partition_offset(&tp.0, tp.1, offset) {
                        self.log
                            .log
                            .warn(&format!("cannot position {}/{}: {err}", tp.0, tp.1));
                    }
                    list.push(tp);
                }
                if let Err(err) = consumer.assign(&with_offsets) {
                    self.log.log.error(&format!(
                        "cannot assign partitions at their state offsets: {err}"
                    ));
                }
                list
            }
            Rebalance::Revoke(_) => Vec::new(),
            Rebalance::Error(e) => {
                self.log.log.warn(&format!("rebalance error: {e}"));
                return;
            }
        };
        *self.assigned.lock().unwrap_or_else(|p| p.into_inner()) = list;
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => self.log.log.info(&format!(
                "committed {} partition offsets from earlier successful runs to Kafka",
                offsets.count()
            )),
            Err(e) => self
                .log
                .log
                .warn(&format!("committing earlier offsets to Kafka failed: {e}")),
        }
    }
}

enum Parse {
    Json,
    Text,
}

/// Per assigned partition: where reading started and the end offset seen at assignment.
struct Bounds {
    start: i64,
    end: i64,
}

#[async_trait::async_trait]
impl TaskKind for KafkaConsume {
    fn name(&self) -> &'static str {
        "kafka_consume"
    }

    fn keys(&self) -> KindKeys {
        KindKeys {
            allowed: &[
                "connection",
                "topics",
                "group_id",
                "start",
                "max_records",
                "max_wait",
                "until_end",
                "parse",
            ],
            required: &["topics", "group_id"],
        }
    }

    async fn run(&self, ctx: &TaskContext, args: Map<String, Value>) -> Result<Value, TaskError> {
        let topics = topics(&args)?;
        let group = opt_str(&args, "group_id")?
            .filter(|g| !g.trim().is_empty())
            .ok_or_else(|| TaskError::Fatal("`group_id` must be a non-empty string".into()))?
            .to_string();
        let start = opt_str(&args, "start")?.unwrap_or("earliest");
        if start != "earliest" && start != "latest" {
            return Err(TaskError::Fatal(format!(
                "`start` must be \"earliest\" or \"latest\", got {start:?}"
            )));
        }
        let max_records = opt_u64(&args, "max_records")?.unwrap_or(DEFAULT_MAX_RECORDS);
        if max_records == 0 {
            return Err(TaskError::Fatal("`max_records` must be at least 1".into()));
        }
        let max_wait = max_wait(&args)?;
        let until_end = match args.get("until_end") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(TaskError::Fatal(format!(
                    "`until_end` must be true or false, got {}",
                    short(other)
                )))
            }
        };
        let parse = match opt_str(&args, "parse")?.unwrap_or("json") {
            "json" => Parse::Json,
            "string" => Parse::Text,
            other => {
                return Err(TaskError::Fatal(format!(
                    "`parse` must be \"json\" or \"string\", got {other:?}"
                )))
            }
        };

        let mut client = Client::from_args(ctx, &args)?;
        client.config.set("group.id", &group);
        // Nothing is committed or stored while reading: see the module comment.
        client.config.set("enable.auto.commit", "false");
        client.config.set("enable.auto.offset.store", "false");
        client.default("auto.offset.reset", start);
        // Re-assigning with offsets in the rebalance callback needs the eager protocol.
        if client
            .config
            .get("partition.assignment.strategy")
            .is_some_and(|s| s.contains("cooperative"))
        {
            ctx.log.warn("partition.assignment.strategy cooperative-sticky is not supported here; using range,roundrobin");
        }
        client
            .config
            .set("partition.assignment.strategy", "range,roundrobin");
        let brokers = client.brokers.clone();
        let lctx = client.context(ctx);

        // Metadata first: it tells whether the brokers are reachable and which state keys
        // (one per partition) to read.
        let infos = {
            let probe: BaseConsumer<LogContext> =
                client
                    .config
                    .create_with_context(lctx.clone())
                    .map_err(|e| TaskError::Fatal(format!("invalid Kafka client settings: {e}")))?;
            let probe = Arc::new(probe);
            let wanted = topics.clone();
            retry_blocking(ctx, &lctx, &brokers, "fetching metadata", move || {
                let mut out = Vec::new();
                for t in &wanted {
                    let md = probe.fetch_metadata(Some(t), super::METADATA_TIMEOUT)?;
                    out.extend(topic_infos(&md, std::slice::from_ref(t)));
                }
                Ok(out)
            })
            .await?
        };
        if let Some(missing) = infos.iter().find(|t| !t.exists) {
            return Err(TaskError::Failed(format!(
                "topic `{}` does not exist on {brokers}",
                missing.name
            )));
        }
        let key_of = |t: &str, p: i32| format!("offset/{group}/{t}/{p}");
        let mut state_keys = Vec::new();
        for t in &infos {
            for p in &t.partitions {
                state_keys.push((key_of(&t.name, *p), (t.name.clone(), *p)));
            }
        }
        let committed = ctx
            .state
            .get_many(
                &state_keys
                    .iter()
                    .map(|(k, _)| k.clone())
                    .collect::<Vec<_>>(),
            )
            .await?;
        let mut state_offsets = HashMap::new();
        for (k, tp) in &state_keys {
            if let Some(v) = committed.get(k) {
                let o: i64 = v.parse().map_err(|_| {
                    TaskError::Fatal(format!("task state `{k}` holds {v:?}, not an offset"))
                })?;
                state_offsets.insert(tp.clone(), o);
            }
        }
        ctx.log.info(&format!(
            "joining group `{group}` for {} at {brokers}; state holds offsets for {} partitions",
            topics.join(", "),
            state_offsets.len()
        ));

        let gctx = GroupContext {
            log: lctx.clone(),
            state_offsets: state_offsets.clone(),
            assigned: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
        };
        let consumer: StreamConsumer<GroupContext> = client
            .config
            .create_with_context(gctx)
            .map_err(|e| TaskError::Fatal(format!("invalid Kafka client settings: {e}")))?;
        let consumer = Arc::new(consumer);
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topic_refs).map_err(|e| {
            TaskError::Failed(format!("cannot subscribe to {}: {e}", topics.join(", ")))
        })?;

        let joined_by = Instant::now() + JOIN_TIMEOUT;
        let mut reading_since: Option<Instant> = None;
        let mut seen_generation = 0;
        let mut assigned: Vec<Tp> = Vec::new();
        let mut bounds: HashMap<Tp, Bounds> = HashMap::new();
        let mut next: BTreeMap<Tp, i64> = BTreeMap::new();
        let mut records = Vec::new();
        loop {
            let generation = consumer.context().generation.load(Ordering::SeqCst);
            if generation != seen_generation {
                seen_generation = generation;
                assigned = consumer
                    .context()
                    .assigned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                ctx.log.info(&format!(
                    "assigned {} partitions: {}",
                    assigned.len(),
                    assigned
                        .iter()
                        .map(|(t, p)| format!("{t}/{p}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                reading_since.get_or_insert_with(Instant::now);
                commit_state_offsets(ctx, &consumer, &assigned, &state_offsets);
                if until_end {
                    let new: Vec<Tp> = assigned
                        .iter()
                        .filter(|tp| !bounds.contains_key(*tp))
                        .cloned()
                        .collect();
                    let found = partition_bounds(
                        ctx,
                        &lctx,
                        &brokers,
                        &consumer,
                        new,
                        &state_offsets,
                        start,
                    )
                    .await?;
                    bounds.extend(found);
                }
            }
            if let Some(since) = reading_since {
                if records.len() as u64 >= max_records {
                    ctx.log
                        .info(&format!("stopping: max_records ({max_records}) reached"));
                    break;
                }
                if until_end
                    && assigned.iter().all(|tp| {
                        bounds.get(tp).is_none_or(|b| {
                            next.get(tp).copied().unwrap_or(b.start).max(b.start) >= b.end
                        })
                    })
                {
                    ctx.log
                        .info("stopping: every assigned partition is read to its end offset");
                    break;
                }
                if since.elapsed() >= max_wait {
                    ctx.log.info(&format!(
                        "stopping: max_wait ({}) elapsed",
                        humantime::format_duration(max_wait)
                    ));
                    break;
                }
            } else if Instant::now() > joined_by {
                let detail = lctx
                    .last_error()
                    .map(|e| format!(" (last client error: {e})"))
                    .unwrap_or_default();
                return Err(TaskError::Failed(format!(
                    "no partitions assigned in group `{group}` by Kafka at {brokers} within {}s{detail}",
                    JOIN_TIMEOUT.as_secs()
                )));
            }
            let polled = tokio::select! {
                m = tokio::time::timeout(TICK, consumer.recv()) => m,
                _ = ctx.cancel.cancelled() => return Err(TaskError::Cancelled),
            };
            let msg = match polled {
                Err(_) => continue,
                Ok(Err(e)) => {
                    ctx.log.warn(&format!("consumer error: {e}"));
                    continue;
                }
                Ok(Ok(m)) => m,
            };
            let tp = (msg.topic().to_string(), msg.partition());
            let offset = msg.offset();
            let key = msg.key().map(|k| String::from_utf8_lossy(k).into_owned());
            let payload = msg.payload();
            ctx.metrics.read(
                1,
                (key.as_ref().map_or(0, String::len) + payload.map_or(0, <[u8]>::len)) as u64,
            );
            let value = match (payload, &parse) {
                (None, _) => Value::Null,
                (Some(b), Parse::Text) => Value::String(String::from_utf8_lossy(b).into_owned()),
                (Some(b), Parse::Json) => serde_json::from_slice(b).map_err(|e| {
                    let text = String::from_utf8_lossy(b);
                    let snippet: String = text.chars().take(SNIPPET).collect();
                    TaskError::Fatal(format!(
                        "record at {}/{}/offset {offset} is not JSON ({e}): {snippet:?}; set parse = \"string\" to read it as text",
                        tp.0, tp.1
                    ))
                })?,
            };
            let timestamp = msg.timestamp().to_millis();
            records.push(json!({
                "topic": tp.0,
                "partition": tp.1,
                "offset": offset,
                "key": key,
                "value": value,
                "timestamp": timestamp,
            }));
            next.insert(tp, offset + 1);
        }

        for ((t, p), o) in &next {
            ctx.state.propose(key_of(t, *p), o.to_string());
        }
        ctx.log.info(&format!(
            "read {} records from {} partitions; their offsets are committed when the run succeeds",
            records.len(),
            next.len()
        ));
        // Leaving the group blocks while librdkafka says goodbye to the coordinator.
        let _ = tokio::task::spawn_blocking(move || {
            consumer.unsubscribe();
            drop(consumer);
        })
        .await;
        Ok(Value::Array(records))
    }
}

fn topics(args: &Map<String, Value>) -> Result<Vec<String>, TaskError> {
    let bad = |v: &Value| {
        TaskError::Fatal(format!(
            "`topics` must be a list of topic names, got {}",
            short(v)
        ))
    };
    let list = match args.get("topics") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| bad(v)))
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => return Err(bad(other)),
        None => return Err(TaskError::Fatal("`topics` is required".into())),
    };
    if list.is_empty() || list.iter().any(|t| t.trim().is_empty()) {
        return Err(TaskError::Fatal(
            "`topics` must name at least one topic, with no empty names".into(),
        ));
    }
    Ok(list)
}

/// `max_wait = "10s"` (any humantime duration) or a number of seconds.
fn max_wait(args: &Map<String, Value>) -> Result<Duration, TaskError> {
    match args.get("max_wait") {
        None | Some(Value::Null) => Ok(DEFAULT_MAX_WAIT),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|s| *s >= 0.0 && s.is_finite())
            .map(Duration::from_secs_f64)
            .ok_or_else(|| TaskError::Fatal(format!("`max_wait` {n} is not a duration"))),
        Some(Value::String(s)) => humantime::parse_duration(s).map_err(|e| {
            TaskError::Fatal(format!(
                "`max_wait` {s:?} is not a duration like \"10s\" or \"2m\": {e}"
            ))
        }),
        Some(other) => Err(TaskError::Fatal(format!(
            "`max_wait` must be a duration like \"10s\", got {}",
            short(other)
        ))),
    }
}

/// Commits to Kafka what earlier successful runs read (per the state), for lag tools.
/// Asynchronous: a failure is only logged.
fn commit_state_offsets(
    ctx: &TaskContext,
    consumer: &StreamConsumer<GroupContext>,
    assigned: &[Tp],
    state_offsets: &HashMap<Tp, i64>,
) {
    let mut tpl = TopicPartitionList::new();
    for tp in assigned {
        if let Some(&o) = state_offsets.get(tp) {
            let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(o));
        }
    }
    if tpl.count() == 0 {
        return;
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        ctx.log
            .warn(&format!("committing earlier offsets to Kafka failed: {e}"));
    }
}

/// Where each partition's reading starts and its end offset now, for `until_end`.
async fn partition_bounds(
    ctx: &TaskContext,
    lctx: &LogContext,
    brokers: &str,
    consumer: &Arc<StreamConsumer<GroupContext>>,
    partitions: Vec<Tp>,
    state_offsets: &HashMap<Tp, i64>,
    start: &str,
) -> Result<Vec<(Tp, Bounds)>, TaskError> {
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let c = consumer.clone();
    let state = state_offsets.clone();
    let latest = start == "latest";
    retry_blocking(ctx, lctx, brokers, "reading partition offsets", move || {
        let mut without_state = TopicPartitionList::new();
        for tp in &partitions {
            if !state.contains_key(tp) {
                without_state.add_partition(&tp.0, tp.1);
            }
        }
        let committed = if without_state.count() > 0 {
            c.committed_offsets(without_state, super::METADATA_TIMEOUT)?
        } else {
            TopicPartitionList::new()
        };
        let mut out = Vec::new();
        for tp in partitions.iter() {
            let (low, high) = c.fetch_watermarks(&tp.0, tp.1, super::METADATA_TIMEOUT)?;
            let start = match state.get(tp) {
                Some(&o) => o,
                None => match committed.find_partition(&tp.0, tp.1).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ if latest => high,
                    _ => low,
                },
            };
            out.push((tp.clone(), Bounds { start, end: high }));
        }
        Ok(out)
    })
    .await
}

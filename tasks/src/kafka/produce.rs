//! `kafka_produce`: writes records to a topic with an idempotent producer and succeeds
//! only when every record's delivery was acknowledged by the brokers (acks=all).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use serde_json::{json, Map, Value};
use sluice_core::{KindKeys, RecordTemplate};

use super::{field, opt_u64, retry_blocking, topic_infos, value_bytes, Client, LogContext};
use crate::{opt_str, short, TaskContext, TaskError, TaskKind};

/// Deliveries awaited at once; librdkafka's own queue holds 100,000 messages by default.
const MAX_IN_FLIGHT: usize = 50_000;
/// Delivery failures quoted in the error message.
const ERRORS_SHOWN: usize = 5;
/// How long a created topic may take to show up in metadata.
const CREATE_WAIT: Duration = Duration::from_secs(30);

pub struct KafkaProduce;

/// Where a record's key and value come from.
struct Layout<'a> {
    key_field: Option<String>,
    value_field: Option<String>,
    /// `key` / `value`: templates rendered per record with `record`.
    key_template: Option<RecordTemplate>,
    value_template: Option<RecordTemplate>,
    ctx: &'a TaskContext,
}

impl Layout<'_> {
    /// The key bytes of record `i`, or a fatal error naming it.
    fn key(&self, i: usize, record: &Value) -> Result<Option<Vec<u8>>, TaskError> {
        if let Some(t) = &self.key_template {
            return match self.ctx.render_for_record(t, "key", i, record)? {
                Value::Null => Err(TaskError::Fatal(format!("record {i}: `key` rendered null"))),
                v => Ok(Some(value_bytes(&v))),
            };
        }
        let Some(path) = &self.key_field else {
            return Ok(None);
        };
        match field(record, path) {
            None => Err(TaskError::Fatal(format!(
                "record {i} has no field `{path}` (key_field): {}",
                short(record)
            ))),
            Some(Value::Null) => Err(TaskError::Fatal(format!(
                "record {i}: field `{path}` (key_field) is null"
            ))),
            Some(v) => Ok(Some(value_bytes(v))),
        }
    }

    /// The payload of record `i`; `None` is a tombstone (value_field pointing at null).
    fn value(&self, i: usize, record: &Value) -> Result<Option<Vec<u8>>, TaskError> {
        if let Some(t) = &self.value_template {
            return match self.ctx.render_for_record(t, "value", i, record)? {
                Value::Null => Ok(None),
                v => Ok(Some(value_bytes(&v))),
            };
        }
        match &self.value_field {
            None => Ok(Some(serde_json::to_vec(record).unwrap_or_default())),
            Some(path) => match field(record, path) {
                None => Err(TaskError::Fatal(format!(
                    "record {i} has no field `{path}` (value_field): {}",
                    short(record)
                ))),
                Some(Value::Null) => Ok(None),
                Some(v) => Ok(Some(value_bytes(v))),
            },
        }
    }
}

/// Delivery outcomes so far.
#[derive(Default)]
struct Tally {
    delivered: u64,
    bytes: u64,
    partitions: BTreeMap<i32, u64>,
    failed: u64,
    errors: Vec<String>,
}

type Outcome = (usize, u64, Result<Result<i32, String>, String>);

impl Tally {
    fn add(&mut self, ctx: &TaskContext, (i, size, res): Outcome) {
        let err = match res {
            Ok(Ok(partition)) => {
                self.delivered += 1;
                self.bytes += size;
                *self.partitions.entry(partition).or_default() += 1;
                ctx.metrics.wrote(1, size);
                return;
            }
            Ok(Err(e)) => e,
            Err(e) => e,
        };
        self.failed += 1;
        ctx.metrics.failed(1);
        if self.errors.len() < ERRORS_SHOWN {
            self.errors.push(format!("record {i}: {err}"));
        }
    }
}

#[async_trait::async_trait]
impl TaskKind for KafkaProduce {
    fn name(&self) -> &'static str {
        "kafka_produce"
    }

    fn keys(&self) -> KindKeys {
        KindKeys {
            allowed: &[
                "connection",
                "topic",
                "records",
                "key_field",
                "value_field",
                "key",
                "value",
                "headers",
                "compression",
                "create_topic",
                "partition",
            ],
            required: &["topic", "records"],
        }
    }

    fn record_template_keys(&self) -> &'static [&'static str] {
        &["key", "value"]
    }

    async fn run(&self, ctx: &TaskContext, args: Map<String, Value>) -> Result<Value, TaskError> {
        let topic = opt_str(&args, "topic")?
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| TaskError::Fatal("`topic` must be a non-empty string".into()))?
            .to_string();
        let records = match args.get("records") {
            Some(Value::Array(a)) => a,
            Some(Value::Null) | None => {
                return Err(TaskError::Fatal(
                    "`records` is required: an array, e.g. records = \"{{ xcom.fetch }}\"".into(),
                ))
            }
            Some(other) => {
                return Err(TaskError::Fatal(format!(
                    "`records` must be an array of records, got {}",
                    short(other)
                )))
            }
        };
        for (t, f) in [("key", "key_field"), ("value", "value_field")] {
            if args.contains_key(t) && args.contains_key(f) {
                return Err(TaskError::Fatal(format!(
                    "set either `{t}` (a template over `record`) or `{f}`, not both"
                )));
            }
        }
        let layout = Layout {
            key_field: opt_str(&args, "key_field")?.map(str::to_string),
            value_field: opt_str(&args, "value_field")?.map(str::to_string),
            key_template: ctx.record_template(&args, "key")?,
            value_template: ctx.record_template(&args, "value")?,
            ctx,
        };
        let headers = headers(&args)?;
        let compression = opt_str(&args, "compression")?.unwrap_or("none");
        if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&compression) {
            return Err(TaskError::Fatal(format!(
                "`compression` must be one of none, gzip, snappy, lz4, zstd; got {compression:?}"
            )));
        }
        let partition = match opt_u64(&args, "partition")? {
            None => None,
            Some(p) => Some(
                i32::try_from(p)
                    .map_err(|_| TaskError::Fatal(format!("`partition` {p} is out of range")))?,
            ),
        };
        let create = create_topic(&args)?;
        // Every record is checked before anything is sent, so a bad record never leaves
        // half the batch in the topic.
        for (i, r) in records.iter().enumerate() {
            layout.key(i, r)?;
            layout.value(i, r)?;
        }

        let mut client = Client::from_args(ctx, &args)?;
        client.default("enable.idempotence", "true");
        client.default("acks", "all");
        client.default("compression.type", compression);
        // Bounded delivery: librdkafka's default is 5 minutes.
        client.default("message.timeout.ms", "60000");
        // A missing topic is created only on request (`create_topic`), never as a side
        // effect of a metadata request.
        client.default("allow.auto.create.topics", "false");
        let lctx = client.context(ctx);
        let producer: FutureProducer<LogContext> = client
            .config
            .create_with_context(lctx.clone())
            .map_err(|e| TaskError::Fatal(format!("invalid Kafka client settings: {e}")))?;
        let brokers = client.brokers.clone();

        let info = {
            let p = producer.clone();
            let wanted = vec![topic.clone()];
            retry_blocking(ctx, &lctx, &brokers, "fetching metadata", move || {
                p.client()
                    .fetch_metadata(Some(&wanted[0]), super::METADATA_TIMEOUT)
                    .map(|md| topic_infos(&md, &wanted).remove(0))
            })
            .await?
        };
        let partitions = if info.exists {
            info.partitions.len()
        } else if let Some((parts, rf)) = create {
            ensure_topic(ctx, &client, &lctx, &producer, &topic, parts, rf).await?
        } else {
            return Err(TaskError::Failed(format!(
                "topic `{topic}` does not exist on {brokers}; create it, or set create_topic = {{ partitions = 3, replication_factor = 1 }}"
            )));
        };
        if let Some(p) = partition {
            if p as usize >= partitions {
                return Err(TaskError::Fatal(format!(
                    "`partition` {p} does not exist: topic `{topic}` has {partitions} partitions"
                )));
            }
        }
        ctx.log.info(&format!(
            "producing {} records to `{topic}` ({partitions} partitions) at {brokers}",
            records.len()
        ));

        let started = Instant::now();
        let mut tally = Tally::default();
        let mut in_flight = FuturesUnordered::new();
        for (i, r) in records.iter().enumerate() {
            let key = layout.key(i, r)?;
            let payload = layout.value(i, r)?;
            let size =
                (key.as_ref().map_or(0, Vec::len) + payload.as_ref().map_or(0, Vec::len)) as u64;
            let mut rec: FutureRecord<'_, Vec<u8>, Vec<u8>> = FutureRecord::to(&topic);
            if let Some(k) = &key {
                rec = rec.key(k);
            }
            if let Some(v) = &payload {
                rec = rec.payload(v);
            }
            if let Some(h) = &headers {
                rec = rec.headers(h.clone());
            }
            if let Some(p) = partition {
                rec = rec.partition(p);
            }
            loop {
                match producer.send_result(rec) {
                    Ok(delivery) => {
                        in_flight.push(delivery.map(move |res| -> Outcome {
                            let res = match res {
                                Ok(Ok(d)) => Ok(Ok(d.partition)),
                                Ok(Err((e, _))) => Ok(Err(e.to_string())),
                                Err(_) => Err("the producer dropped the delivery report".into()),
                            };
                            (i, size, res)
                        }));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // librdkafka's queue is full: wait for a delivery, then retry.
                        rec = back;
                        let next = tokio::select! {
                            n = in_flight.next() => n,
                            _ = ctx.cancel.cancelled() => return Err(TaskError::Cancelled),
                        };
                        match next {
                            Some(o) => tally.add(ctx, o),
                            None => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                    Err((e, _)) => {
                        ctx.metrics.failed(1);
                        return Err(TaskError::Failed(format!(
                            "record {i}: cannot queue it for `{topic}`: {e}"
                        )));
                    }
                }
            }
            while in_flight.len() >= MAX_IN_FLIGHT {
                let next = tokio::select! {
                    n = in_flight.next() => n,
                    _ = ctx.cancel.cancelled() => return Err(TaskError::Cancelled),
                };
                if let Some(o) = next {
                    tally.add(ctx, o);
                }
            }
        }
        loop {
            let next = tokio::select! {
                n = in_flight.next() => n,
                _ = ctx.cancel.cancelled() => return Err(TaskError::Cancelled),
            };
            match next {
                Some(o) => tally.add(ctx, o),
                None => break,
            }
        }
        let secs = started.elapsed().as_secs_f64();
        if tally.failed > 0 {
            return Err(TaskError::Failed(format!(
                "{} of {} records were not delivered to `{topic}` at {brokers}: {}",
                tally.failed,
                records.len(),
                tally.errors.join("; ")
            )));
        }
        ctx.log.info(&format!(
            "delivered {} records ({} bytes) to `{topic}` in {secs:.2}s",
            tally.delivered, tally.bytes
        ));
        let partitions: Map<String, Value> = tally
            .partitions
            .iter()
            .map(|(p, n)| (p.to_string(), json!(n)))
            .collect();
        Ok(json!({
            "topic": topic,
            "records": tally.delivered,
            "bytes": tally.bytes,
            "partitions": partitions,
        }))
    }
}

/// `headers = { source = "steam" }`: static headers added to every record.
fn headers(args: &Map<String, Value>) -> Result<Option<OwnedHeaders>, TaskError> {
    match args.get("headers") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => {
            let mut h = OwnedHeaders::new_with_capacity(m.len());
            for (k, v) in m {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                h = h.insert(Header {
                    key: k,
                    value: Some(&v),
                });
            }
            Ok(Some(h))
        }
        Some(other) => Err(TaskError::Fatal(format!(
            "`headers` must be a table of names to values, got {}",
            short(other)
        ))),
    }
}

/// `create_topic = { partitions = 3, replication_factor = 1 }` (or `true` for 1 and 1).
fn create_topic(args: &Map<String, Value>) -> Result<Option<(i32, i32)>, TaskError> {
    let bad = |what: &str| {
        TaskError::Fatal(format!(
            "`create_topic` {what}; expected e.g. create_topic = {{ partitions = 3, replication_factor = 1 }}"
        ))
    };
    match args.get("create_topic") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
        Some(Value::Bool(true)) => Ok(Some((1, 1))),
        Some(Value::Object(m)) => {
            for k in m.keys() {
                if k != "partitions" && k != "replication_factor" {
                    return Err(bad(&format!("has an unknown key `{k}`")));
                }
            }
            let num = |k: &str| -> Result<i32, TaskError> {
                match m.get(k) {
                    None => Ok(1),
                    Some(v) => v
                        .as_u64()
                        .filter(|n| (1..=100_000).contains(n))
                        .map(|n| n as i32)
                        .ok_or_else(|| bad(&format!("`{k}` must be a positive integer"))),
                }
            };
            Ok(Some((num("partitions")?, num("replication_factor")?)))
        }
        Some(other) => Err(bad(&format!("must be a table, got {}", short(other)))),
    }
}

/// Creates `topic` and waits until the brokers report its partitions; returns how many.
async fn ensure_topic(
    ctx: &TaskContext,
    client: &Client,
    lctx: &LogContext,
    producer: &FutureProducer<LogContext>,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> Result<usize, TaskError> {
    let admin: AdminClient<LogContext> = client
        .config
        .create_with_context(lctx.clone())
        .map_err(|e| TaskError::Fatal(format!("invalid Kafka client settings: {e}")))?;
    ctx.log.info(&format!(
        "creating topic `{topic}` with {partitions} partitions, replication factor {replication}"
    ));
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let res = tokio::select! {
        r = admin.create_topics([&new], &opts) => r,
        _ = ctx.cancel.cancelled() => return Err(TaskError::Cancelled),
    };
    match res {
        Ok(results) => {
            for r in results {
                match r {
                    Ok(_) => {}
                    // Another writer created it first: fine.
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => {
                        return Err(TaskError::Failed(format!(
                            "cannot create topic `{name}` at {}: {code}",
                            client.brokers
                        )))
                    }
                }
            }
        }
        Err(e) => {
            return Err(TaskError::Failed(format!(
                "cannot create topic `{topic}` at {}: {e}",
                client.brokers
            )))
        }
    }
    let deadline = Instant::now() + CREATE_WAIT;
    loop {
        let p = producer.clone();
        let wanted = vec![topic.to_string()];
        let info = retry_blocking(ctx, lctx, &client.brokers, "fetching metadata", move || {
            p.client()
                .fetch_metadata(Some(&wanted[0]), super::METADATA_TIMEOUT)
                .map(|md| topic_infos(&md, &wanted).remove(0))
        })
        .await?;
        if info.exists {
            return Ok(info.partitions.len());
        }
        if Instant::now() > deadline {
            return Err(TaskError::Failed(format!(
                "topic `{topic}` was created but does not show up in metadata from {} after {}s",
                client.brokers,
                CREATE_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

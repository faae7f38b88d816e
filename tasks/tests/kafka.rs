//! kafka_produce / kafka_consume against a real Kafka-protocol broker (tansu, started by
//! scripts/kafka.sh): `eval "$(scripts/kafka.sh)"` sets SLUICE_TEST_KAFKA.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Map, Value};
use sluice_tasks::{
    Connection, Connections, MemoryState, Registry, TaskContext, TaskError, TaskState,
};

fn broker() -> String {
    let addr = std::env::var("SLUICE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let sock = addr
        .parse()
        .unwrap_or_else(|e| panic!("SLUICE_TEST_KAFKA={addr} is not host:port: {e}"));
    std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(3)).unwrap_or_else(|e| {
        panic!("no Kafka broker at {addr} ({e}): run eval \"$(scripts/kafka.sh)\" first")
    });
    addr
}

/// A topic name no other test (or earlier run against the same broker) uses.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("sluice-{name}-{}-{nanos}", std::process::id())
}

fn ctx_for(uri: &str, state: Arc<MemoryState>) -> TaskContext {
    TaskContext {
        conns: Connections::from_list(vec![Connection::parse("kafka_default", uri).expect("uri")]),
        state: Arc::new(TaskState::new(state, "d.consume".into())),
        ..TaskContext::detached("d", "t")
    }
}

fn ctx(addr: &str) -> TaskContext {
    ctx_for(&format!("kafka://{addr}"), Arc::new(MemoryState::default()))
}

fn args(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("object")
}

async fn run(kind: &str, ctx: &TaskContext, a: Value) -> Result<Value, TaskError> {
    let reg = Registry::builtin();
    let k = reg.get(kind).expect("kind registered").clone();
    k.run(ctx, args(a)).await
}

fn plain_consumer(addr: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", unique("check"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

fn partition_count(addr: &str, topic: &str) -> usize {
    let c = plain_consumer(addr);
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    md.topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len())
}

/// Reads `n` messages from every partition of `topic` with a plain rdkafka consumer
/// (no group), within a bound: (partition, key, payload) triples.
fn read_back(addr: &str, topic: &str, partitions: usize, n: usize) -> Vec<(i32, String, Value)> {
    let c = plain_consumer(addr);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(500)) {
            let m = m.expect("message");
            out.push((
                m.partition(),
                String::from_utf8(m.key().expect("key").to_vec()).expect("utf8"),
                serde_json::from_slice(m.payload().expect("payload")).expect("json"),
            ));
        }
    }
    // Nothing beyond the expected count either.
    if let Some(m) = c.poll(Duration::from_secs(1)) {
        panic!("unexpected extra message: {:?}", m.map(|m| m.offset()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produces_keyed_records_readable_by_a_plain_consumer() {
    let addr = broker();
    let topic = unique("produce");
    let records: Vec<Value> = (0..1000)
        .map(|i| json!({"game": format!("game-{}", i % 37), "n": i, "pad": "x".repeat(50)}))
        .collect();
    let c = ctx(&addr);
    let out = run(
        "kafka_produce",
        &c,
        json!({
            "topic": topic,
            "records": records,
            "key_field": "game",
            "create_topic": {"partitions": 3, "replication_factor": 1},
            "compression": "lz4",
            "headers": {"source": "test"},
        }),
    )
    .await
    .expect("produces");
    assert_eq!(out["topic"], json!(topic));
    assert_eq!(out["records"], json!(1000));
    assert_eq!(partition_count(&addr, &topic), 3);
    let reported: BTreeMap<i32, u64> = out["partitions"]
        .as_object()
        .expect("partitions object")
        .iter()
        .map(|(k, v)| (k.parse().expect("int"), v.as_u64().expect("count")))
        .collect();
    assert_eq!(reported.values().sum::<u64>(), 1000);
    assert_eq!(
        reported.len(),
        3,
        "37 keys spread over all 3 partitions: {reported:?}"
    );
    let snap = c.metrics.snapshot();
    assert_eq!(snap.records_out, 1000);
    assert_eq!(Some(snap.bytes_out), out["bytes"].as_u64());

    let got = read_back(&addr, &topic, 3, 1000);
    assert_eq!(got.len(), 1000);
    let mut per_partition: BTreeMap<i32, u64> = BTreeMap::new();
    let mut key_partition: HashMap<String, i32> = HashMap::new();
    let mut ns = BTreeSet::new();
    for (p, key, value) in &got {
        *per_partition.entry(*p).or_default() += 1;
        assert_eq!(value["game"], json!(key), "key is the record's game");
        // One key, one partition: that is what keying is for.
        assert_eq!(*key_partition.entry(key.clone()).or_insert(*p), *p, "{key}");
        ns.insert(value["n"].as_u64().expect("n"));
    }
    assert_eq!(per_partition, reported);
    assert_eq!(key_partition.len(), 37);
    assert_eq!(ns.len(), 1000, "every record exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_topic_makes_partitions_and_a_missing_topic_is_named() {
    let addr = broker();
    let topic = unique("create");
    let err = run(
        "kafka_produce",
        &ctx(&addr),
        json!({"topic": topic, "records": [{"a": 1}]}),
    )
    .await
    .expect_err("no such topic");
    assert!(
        err.to_string().contains(&topic) && err.to_string().contains("create_topic"),
        "{err}"
    );
    let out = run(
        "kafka_produce",
        &ctx(&addr),
        json!({
            "topic": topic,
            "records": [{"a": 1}, {"a": 2}],
            "value_field": "a",
            "partition": 2,
            "create_topic": {"partitions": 3},
        }),
    )
    .await
    .expect("creates and produces");
    assert_eq!(partition_count(&addr, &topic), 3);
    assert_eq!(out["partitions"], json!({"2": 2}));
    // The topic exists now: a second produce does not need create_topic.
    run(
        "kafka_produce",
        &ctx(&addr),
        json!({"topic": topic, "records": [{"a": 3}]}),
    )
    .await
    .expect("produces to the existing topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_without_the_key_field_fails_naming_it_and_sends_nothing() {
    let addr = broker();
    let topic = unique("nokey");
    let err = run(
        "kafka_produce",
        &ctx(&addr),
        json!({
            "topic": topic,
            "records": [{"game": "a"}, {"game": "b"}, {"name": "no game"}],
            "key_field": "game",
            "create_topic": {"partitions": 1},
        }),
    )
    .await
    .expect_err("missing key");
    assert!(matches!(err, TaskError::Fatal(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("record 2") && msg.contains("`game`"), "{msg}");
    assert_eq!(
        partition_count(&addr, &topic),
        0,
        "nothing was created or sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_fails_within_a_bound_naming_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let err = run(
        "kafka_produce",
        &ctx(&addr),
        json!({"topic": "t", "records": [{"a": 1}]}),
    )
    .await
    .expect_err("no broker");
    eprintln!("produce error: {err}");
    assert!(matches!(err, TaskError::Failed(_)), "retryable: {err:?}");
    assert!(err.to_string().contains(&addr), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let err = run(
        "kafka_consume",
        &ctx(&addr),
        json!({"topics": ["t"], "group_id": "g"}),
    )
    .await
    .expect_err("no broker");
    assert!(err.to_string().contains(&addr), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
}

fn offsets(records: &Value) -> Vec<(i64, i64)> {
    let mut v: Vec<(i64, i64)> = records
        .as_array()
        .expect("records array")
        .iter()
        .map(|r| {
            (
                r["partition"].as_i64().expect("partition"),
                r["offset"].as_i64().expect("offset"),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_commits_offsets_only_with_a_successful_run() {
    let addr = broker();
    let uri = format!("kafka://{addr}");
    let topic = unique("consume");
    let group = unique("group");
    let batch = |from: usize, to: usize| -> Vec<Value> {
        (from..to)
            .map(|i| json!({"id": i, "user": format!("u{}", i % 5)}))
            .collect()
    };
    run(
        "kafka_produce",
        &ctx(&addr),
        json!({"topic": topic, "records": batch(0, 20), "key_field": "user",
               "create_topic": {"partitions": 2}}),
    )
    .await
    .expect("produce");
    let state = Arc::new(MemoryState::default());
    let consume = json!({"topics": [topic], "group_id": group, "until_end": true,
                         "max_wait": "60s"});

    // Run 1 reads everything; a downstream task fails, so its proposals are dropped.
    let c1 = ctx_for(&uri, state.clone());
    let first = run("kafka_consume", &c1, consume.clone())
        .await
        .expect("consume 1");
    assert_eq!(offsets(&first).len(), 20);
    let ids: BTreeSet<u64> = first
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["value"]["id"].as_u64().expect("parsed JSON value"))
        .collect();
    assert_eq!(ids, (0..20).collect());
    let r0 = &first[0];
    assert_eq!(r0["topic"], json!(topic));
    assert!(
        r0["key"].as_str().is_some_and(|k| k.starts_with('u')),
        "{r0}"
    );
    assert!(r0["timestamp"].as_i64().is_some(), "{r0}");
    assert_eq!(c1.metrics.snapshot().records_in, 20);
    let proposals = c1.state.take_proposals();
    assert!(
        proposals
            .iter()
            .all(|(k, _)| k.starts_with(&format!("offset/{group}/{topic}/"))),
        "{proposals:?}"
    );
    assert_eq!(
        proposals
            .iter()
            .map(|(_, v)| v.parse::<u64>().expect("offset"))
            .sum::<u64>(),
        20,
        "next offsets per partition add up to the records read"
    );

    // Run 2 sees the same records again: nothing was committed, in Sluice or in Kafka.
    let c2 = ctx_for(&uri, state.clone());
    let second = run("kafka_consume", &c2, consume.clone())
        .await
        .expect("consume 2");
    assert_eq!(offsets(&second), offsets(&first));
    // This run succeeds: the executor commits its proposals.
    state.commit("d.consume", c2.state.take_proposals());

    run(
        "kafka_produce",
        &ctx(&addr),
        json!({"topic": topic, "records": batch(20, 25), "key_field": "user"}),
    )
    .await
    .expect("produce more");

    // Run 3 sees only the new records.
    let c3 = ctx_for(&uri, state.clone());
    let third = run("kafka_consume", &c3, consume.clone())
        .await
        .expect("consume 3");
    let ids: BTreeSet<u64> = third
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["value"]["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids, (20..25).collect());

    // Run 3 also committed run 2's offsets to Kafka, for lag tools.
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("group.id", &group)
        .create()
        .expect("probe");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&topic, 0);
    tpl.add_partition(&topic, 1);
    let committed = probe
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            other => panic!("no committed offset for {}: {other:?}", e.partition()),
        })
        .sum();
    assert_eq!(total, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_stops_at_max_records_and_reads_text() {
    let addr = broker();
    let topic = unique("text");
    run(
        "kafka_produce",
        &ctx(&addr),
        json!({"topic": topic, "records": (0..10).map(|i| json!({"s": format!("line {i}")})).collect::<Vec<_>>(),
               "value_field": "s", "create_topic": {"partitions": 1}}),
    )
    .await
    .expect("produce");
    let c = ctx(&addr);
    let out = run(
        "kafka_consume",
        &c,
        json!({"topics": topic, "group_id": unique("g"), "max_records": 4,
               "parse": "string", "max_wait": "60s"}),
    )
    .await
    .expect("consume");
    let values: Vec<&str> = out
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["value"].as_str().expect("text"))
        .collect();
    assert_eq!(values, ["line 0", "line 1", "line 2", "line 3"]);
    let proposals = c.state.take_proposals();
    assert_eq!(proposals.len(), 1);
    assert_eq!(
        proposals[0].1, "4",
        "next offset after the 4 records returned"
    );

    // The same text read as JSON (the default) fails naming where, with a snippet.
    let err = run(
        "kafka_consume",
        &ctx(&addr),
        json!({"topics": topic, "group_id": unique("g"), "max_wait": "60s"}),
    )
    .await
    .expect_err("not JSON");
    assert!(matches!(err, TaskError::Fatal(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{topic}/0/offset 0")) && msg.contains("line 0"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_and_value_templates_render_per_record() {
    let addr = broker();
    let topic = unique("tpl");
    let mut c = ctx(&addr);
    c.template_context = minijinja::Value::from_serialize(json!({"ds": "2026-11-22"}));
    let records: Vec<Value> = (0..20)
        .map(|i| json!({"appid": 700 + i % 4, "players": i * 10}))
        .collect();
    run(
        "kafka_produce",
        &c,
        json!({
            "topic": topic,
            "records": records,
            "key": "app-{{ record.appid }}",
            "value": "{{ {'appid': record.appid, 'players': record.players, 'day': ds} }}",
            "create_topic": {"partitions": 2},
        }),
    )
    .await
    .expect("produces");
    let got = read_back(&addr, &topic, 2, 20);
    assert_eq!(got.len(), 20);
    for (_, key, value) in &got {
        assert_eq!(key, &format!("app-{}", value["appid"]), "{value}");
        assert_eq!(value["day"], "2026-11-22");
    }
    // A record the key template cannot render fails naming it, and sends nothing.
    let err = run(
        "kafka_produce",
        &c,
        json!({"topic": topic, "records": [{"appid": 1}, {"x": 2}], "key": "{{ record.appid }}"}),
    )
    .await
    .expect_err("record 1 has no appid");
    assert!(err.to_string().contains("record 1: `key`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_producer_rejects_is_counted_as_a_produce_error() {
    let addr = broker();
    let topic = unique("toolarge");
    // librdkafka refuses records above message.max.bytes before sending them: a
    // produce error the try reports and the executor counts
    // (sluice_task_records_failed_total{kind="kafka_produce"}).
    let ctx = ctx_for(
        &format!("kafka://{addr}?message.max.bytes=2000"),
        Arc::new(MemoryState::default()),
    );
    let err = run(
        "kafka_produce",
        &ctx,
        json!({
            "topic": topic,
            "records": [{"id": "small"}, {"id": "big", "text": "x".repeat(5000)}],
            "key_field": "id",
            "create_topic": {"partitions": 1},
        }),
    )
    .await
    .expect_err("the large record cannot be produced");
    assert!(err.to_string().contains("record 1"), "{err}");
    assert_eq!(ctx.metrics.snapshot().records_failed, 1);
}

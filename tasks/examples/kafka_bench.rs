//! Throughput of `kafka_produce` against a bare rdkafka FutureProducer loop, same broker,
//! same records, same producer settings (idempotent, acks=all), in one process.
//!
//!     eval "$(scripts/kafka.sh)"
//!     cargo run --release -p sluice-tasks --example kafka_bench -- --records 1000000

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use sluice_tasks::{Connection, Connections, Registry, TaskContext};

const PARTITIONS: i32 = 3;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() {
    let n: usize = arg("--records").map_or(1_000_000, |s| s.parse().expect("--records N"));
    let broker = arg("--broker")
        .or_else(|| std::env::var("SLUICE_TEST_KAFKA").ok())
        .unwrap_or_else(|| "127.0.0.1:9092".into());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let kind_topic = format!("bench-kind-{stamp}");
    let bare_topic = format!("bench-bare-{stamp}");

    // ~200-byte records, as a fetch task would hand over.
    let records: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "id": i,
                "game": format!("game-{}", i % 100),
                "ts": "2024-05-01T12:00:00Z",
                "score": (i * 7919) % 100_000,
                "payload": "abcdefghij".repeat(12),
            })
        })
        .collect();
    let avg = records
        .iter()
        .map(|r| serde_json::to_vec(r).expect("json").len())
        .sum::<usize>()
        / n.max(1);
    println!("{n} records of ~{avg} bytes, broker {broker}, {PARTITIONS} partitions");

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .create()
        .expect("admin client");
    let topics = [
        NewTopic::new(&kind_topic, PARTITIONS, TopicReplication::Fixed(1)),
        NewTopic::new(&bare_topic, PARTITIONS, TopicReplication::Fixed(1)),
    ];
    for r in admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .expect("create topics")
    {
        r.expect("topic created");
    }

    // The kind.
    let ctx = TaskContext {
        conns: Connections::from_list(vec![Connection::parse(
            "kafka_default",
            &format!("kafka://{broker}"),
        )
        .expect("uri")]),
        ..TaskContext::detached("bench", "produce")
    };
    let kind = Registry::builtin()
        .get("kafka_produce")
        .expect("kafka_produce")
        .clone();
    let mut args = serde_json::Map::new();
    args.insert("topic".into(), json!(kind_topic));
    args.insert("records".into(), Value::Array(records.clone()));
    args.insert("key_field".into(), json!("game"));
    let started = Instant::now();
    let out = kind.run(&ctx, args).await.expect("kind produces");
    let kind_secs = started.elapsed().as_secs_f64();
    assert_eq!(out["records"], json!(n));

    // The bare loop: same settings the kind uses.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "none")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer");
    let started = Instant::now();
    let mut pending = VecDeque::new();
    let mut delivered = 0usize;
    for r in &records {
        let key = r["game"].as_str().expect("game").as_bytes().to_vec();
        let payload = serde_json::to_vec(r).expect("json");
        let mut rec = FutureRecord::to(&bare_topic).key(&key).payload(&payload);
        loop {
            match producer.send_result(rec) {
                Ok(f) => {
                    pending.push_back(f);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    match pending.pop_front() {
                        Some(f) => {
                            f.await.expect("report").expect("delivered");
                            delivered += 1;
                        }
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                Err((e, _)) => panic!("send: {e}"),
            }
        }
    }
    for f in pending {
        f.await.expect("report").expect("delivered");
        delivered += 1;
    }
    let bare_secs = started.elapsed().as_secs_f64();
    assert_eq!(delivered, n);

    let kind_rate = n as f64 / kind_secs;
    let bare_rate = n as f64 / bare_secs;
    println!("kafka_produce kind: {kind_rate:>10.0} records/s ({kind_secs:.2}s)");
    println!("bare FutureProducer: {bare_rate:>10.0} records/s ({bare_secs:.2}s)");
    println!("kind / bare: {:.2}", kind_rate / bare_rate);

    let _ = admin
        .delete_topics(&[&kind_topic, &bare_topic], &AdminOptions::new())
        .await;
}

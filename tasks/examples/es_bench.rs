//! Throughput of `es_index` against a bare `_bulk` loop, same server, same run.
//!
//! cargo run --release -p sluice-tasks --example es_bench -- --docs 100000 --url http://127.0.0.1:9200
//!
//! Options: --docs N (100000), --url URL, --batch-size N (500). Creates and deletes its
//! own indices.

use std::time::Instant;

use serde_json::{json, Value};
use sluice_tasks::{Connection, Connections, Registry, TaskContext};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn docs(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "id": format!("doc-{i}"),
                "user": {"name": format!("user{}", i % 1000), "followers": i % 5000},
                "text": format!("tweet number {i} about rust and search engines"),
                "likes": i % 97,
                "created_at": "2024-08-01T12:00:00Z",
            })
        })
        .collect()
}

async fn count(client: &reqwest::Client, url: &str, index: &str) -> u64 {
    client
        .post(format!("{url}/{index}/_refresh"))
        .send()
        .await
        .expect("refresh");
    let v: Value = client
        .get(format!("{url}/{index}/_count"))
        .send()
        .await
        .expect("count")
        .json()
        .await
        .expect("count json");
    v["count"].as_u64().unwrap_or(0)
}

/// The baseline: serialize a batch, POST it, check `errors`, repeat.
async fn bare_bulk(
    client: &reqwest::Client,
    url: &str,
    index: &str,
    records: &[Value],
    batch: usize,
) {
    for chunk in records.chunks(batch) {
        let mut body = Vec::new();
        for r in chunk {
            serde_json::to_writer(&mut body, &json!({"index": {"_id": r["id"]}})).unwrap();
            body.push(b'\n');
            serde_json::to_writer(&mut body, r).unwrap();
            body.push(b'\n');
        }
        let resp: Value = client
            .post(format!("{url}/{index}/_bulk"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .expect("bulk")
            .json()
            .await
            .expect("bulk json");
        assert_eq!(resp["errors"], false, "bulk errors");
    }
}

#[tokio::main]
async fn main() {
    let n: usize = arg("--docs", "100000").parse().expect("--docs");
    let url = arg("--url", "http://127.0.0.1:9200");
    let batch: usize = arg("--batch-size", "500").parse().expect("--batch-size");
    let client = reqwest::Client::new();
    let records = docs(n);
    let stamp = std::process::id();
    println!("es_bench: {n} docs, batch size {batch}, server {url}");

    let index = format!("sluice-bench-bare-{stamp}");
    let t = Instant::now();
    bare_bulk(&client, &url, &index, &records, batch).await;
    let bare = t.elapsed();
    assert_eq!(count(&client, &url, &index).await, n as u64);
    let _ = client.delete(format!("{url}/{index}")).send().await;
    let bare_rate = n as f64 / bare.as_secs_f64();
    println!(
        "bare _bulk loop            {:>8.2} s  {:>10.0} docs/s",
        bare.as_secs_f64(),
        bare_rate
    );

    let reg = Registry::builtin();
    let kind = reg.get("es_index").expect("es_index");
    for parallelism in [1usize, 2] {
        let ctx = TaskContext {
            conns: Connections::from_list(vec![Connection::parse("es_default", &url).unwrap()]),
            ..TaskContext::detached("bench", "es")
        };
        let index = format!("sluice-bench-kind{parallelism}-{stamp}");
        let args = json!({
            "index": index, "records": records, "id_field": "id",
            "batch_size": batch, "parallelism": parallelism,
        });
        let Value::Object(args) = args else {
            unreachable!()
        };
        let t = Instant::now();
        kind.run(&ctx, args).await.expect("es_index");
        let took = t.elapsed();
        assert_eq!(count(&client, &url, &index).await, n as u64);
        let _ = client.delete(format!("{url}/{index}")).send().await;
        let rate = n as f64 / took.as_secs_f64();
        println!(
            "es_index parallelism={parallelism}     {:>8.2} s  {:>10.0} docs/s  ratio {:.2}",
            took.as_secs_f64(),
            rate,
            rate / bare_rate
        );
    }
}

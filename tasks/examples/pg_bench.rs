//! Throughput of `pg_write` against a plain COPY, same server, same run.
//!
//! cargo run --release -p sluice-tasks --example pg_bench -- --rows 1000000 --url postgres://postgres@127.0.0.1:5432/postgres
//!
//! Options: --rows N (1000000), --url ADMIN_URL, --insert-rows N (100000: rows for the
//! slower insert/upsert modes). Creates its own database and drops it at the end.

use std::time::Instant;

use serde_json::{json, Value};
use sluice_store::scratch::ScratchDatabase;
use sluice_tasks::{Connection, Connections, Registry, TaskContext};
use sqlx::{Connection as _, PgConnection, Row};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn rows(n: usize) -> Vec<Value> {
    const COUNTRIES: [&str; 4] = ["de", "fr", "us", "jp"];
    (0..n)
        .map(|i| {
            json!({
                "id": i,
                "name": format!("player {i}"),
                "score": i as f64 * 0.5,
                "active": i % 3 == 0,
                "country": COUNTRIES[i % 4],
            })
        })
        .collect()
}

const TABLE: &str =
    "(id bigint PRIMARY KEY, name text, score double precision, active boolean, country text)";

/// The baseline: one COPY of all rows, formatted for exactly this schema.
async fn plain_copy(conn: &mut PgConnection, records: &[Value]) {
    let mut data = Vec::with_capacity(records.len() * 48);
    for r in records {
        use std::io::Write;
        writeln!(
            data,
            "{}\t{}\t{}\t{}\t{}",
            r["id"],
            r["name"].as_str().unwrap(),
            r["score"],
            if r["active"].as_bool().unwrap() {
                't'
            } else {
                'f'
            },
            r["country"].as_str().unwrap()
        )
        .unwrap();
    }
    let mut copy = conn
        .copy_in_raw("COPY bare (id, name, score, active, country) FROM STDIN")
        .await
        .expect("copy");
    copy.send(data).await.expect("send");
    copy.finish().await.expect("finish");
}

async fn count(conn: &mut PgConnection, table: &str) -> i64 {
    sqlx::query(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(conn)
        .await
        .expect("count")
        .get(0)
}

#[tokio::main]
async fn main() {
    let n: usize = arg("--rows", "1000000").parse().expect("--rows");
    let insert_n: usize = arg("--insert-rows", "100000")
        .parse()
        .expect("--insert-rows");
    let admin = arg("--url", "postgres://postgres@127.0.0.1:5432/postgres");
    let scratch = ScratchDatabase::create(&admin, "sluice_bench_")
        .await
        .expect("create the benchmark database");
    let (db, url) = (scratch.name.clone(), scratch.url.clone());
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let records = rows(n);
    println!("pg_bench: {n} rows ({insert_n} for insert/upsert), database {db}");

    sqlx::query(&format!("CREATE TABLE bare {TABLE}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let t = Instant::now();
    plain_copy(&mut conn, &records).await;
    let bare = t.elapsed();
    assert_eq!(count(&mut conn, "bare").await, n as i64);
    let bare_rate = n as f64 / bare.as_secs_f64();
    println!(
        "plain COPY (one statement)           {:>7.2} s  {:>9.0} rows/s",
        bare.as_secs_f64(),
        bare_rate
    );

    let reg = Registry::builtin();
    let kind = reg.get("pg_write").expect("pg_write");
    let cases: [(&str, usize, &str, usize); 4] = [
        ("copy", 1000, "copy_1k", n),
        ("copy", 50_000, "copy_50k", n),
        ("insert", 1000, "insert_1k", insert_n.min(n)),
        ("upsert", 1000, "upsert_1k", insert_n.min(n)),
    ];
    for (mode, batch, table, count_rows) in cases {
        sqlx::query(&format!("CREATE TABLE {table} {TABLE}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let ctx = TaskContext {
            conns: Connections::from_list(vec![Connection::parse("pg_default", &url).unwrap()]),
            ..TaskContext::detached("bench", "pg")
        };
        let mut args = json!({"table": table, "records": records[..count_rows], "mode": mode, "batch_size": batch});
        if mode == "upsert" {
            args["conflict_key"] = json!(["id"]);
        }
        let Value::Object(args) = args else {
            unreachable!()
        };
        let t = Instant::now();
        kind.run(&ctx, args).await.expect("pg_write");
        let took = t.elapsed();
        assert_eq!(count(&mut conn, table).await, count_rows as i64);
        let rate = count_rows as f64 / took.as_secs_f64();
        println!(
            "pg_write {mode:<6} batch_size={batch:<6} {:>7.2} s  {:>9.0} rows/s  ratio {:.2} ({count_rows} rows)",
            took.as_secs_f64(),
            rate,
            rate / bare_rate
        );
    }
    let _ = conn.close().await;
    scratch.drop_database().await.expect("drop database");
}

//! `pg_write` against the local PostgreSQL (SLUICE_TEST_PG_URL), one fresh database per
//! test.

use serde_json::{json, Value};
use sluice_store::testing::TestDb;
use sluice_tasks::{Connection, Connections, Registry, TaskContext, TaskError};
use sqlx::{Connection as _, PgConnection, Row};

fn ctx_for(url: &str) -> TaskContext {
    TaskContext {
        conns: Connections::from_list(vec![Connection::parse("pg_default", url).expect("uri")]),
        ..TaskContext::detached("pg_dag", "write_task")
    }
}

async fn run(ctx: &TaskContext, args: Value) -> Result<Value, TaskError> {
    let Value::Object(args) = args else {
        panic!("args must be an object")
    };
    Registry::builtin()
        .get("pg_write")
        .expect("pg_write is registered")
        .run(ctx, args)
        .await
}

async fn sql(url: &str) -> PgConnection {
    PgConnection::connect(url).await.expect("connect")
}

async fn scalar_i64(conn: &mut PgConnection, q: &str) -> i64 {
    sqlx::query(q)
        .fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"))
        .get(0)
}

#[tokio::test]
async fn upsert_twice_keeps_row_count_and_updates_values() {
    let db = TestDb::postgres().await;
    let mut c = sql(&db.url).await;
    sqlx::query(
        "CREATE TABLE scores (player_id bigint PRIMARY KEY, name text, score double precision)",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let ctx = ctx_for(&db.url);
    let records: Vec<Value> = (0..250)
        .map(|i| json!({"player_id": i, "name": format!("p{i}"), "score": i as f64 / 2.0}))
        .collect();
    let args = json!({
        "table": "scores", "records": records, "mode": "upsert",
        "conflict_key": ["player_id"], "batch_size": 100,
    });
    let out = run(&ctx, args).await.expect("first upsert");
    assert_eq!(
        out,
        json!({"table": "scores", "rows_written": 250, "batches": 3, "mode": "upsert"})
    );

    // Same keys, new scores; a key repeated within a batch keeps its last record.
    let mut records: Vec<Value> = (0..250)
        .map(|i| json!({"player_id": i, "name": format!("p{i}"), "score": 1000.0 + i as f64}))
        .collect();
    records.push(json!({"player_id": 7, "name": "seven", "score": 7.5}));
    let args = json!({
        "table": "scores", "records": records, "mode": "upsert",
        "conflict_key": "player_id", "batch_size": 1000,
    });
    run(&ctx, args).await.expect("second upsert");
    assert_eq!(scalar_i64(&mut c, "SELECT count(*) FROM scores").await, 250);
    let row = sqlx::query("SELECT name, score FROM scores WHERE player_id = 3")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(row.get::<f64, _>("score"), 1003.0);
    let row = sqlx::query("SELECT name, score FROM scores WHERE player_id = 7")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("name"), "seven");
    assert_eq!(row.get::<f64, _>("score"), 7.5);
    assert_eq!(ctx.metrics.snapshot().records_out, 500);
    drop(c);
    db.cleanup().await;
}

#[tokio::test]
async fn copy_writes_ten_thousand_rows_into_a_created_table() {
    let db = TestDb::postgres().await;
    let ctx = ctx_for(&db.url);
    let records: Vec<Value> = (0..10_000)
        .map(|i| {
            json!({
                "id": i,
                "label": format!("row\t{i}\nwith \\ specials"),
                "ratio": i as f64 + 0.25,
                "ok": i % 2 == 0,
                "at": "2024-08-01T12:00:00Z",
                "tags": ["a", i],
                "note": if i == 5 { Value::Null } else { json!("n") },
            })
        })
        .collect();
    let out = run(
        &ctx,
        json!({
            "table": "bulk_rows", "records": records, "mode": "copy",
            "create_table": true, "batch_size": 4000,
        }),
    )
    .await
    .expect("copy");
    assert_eq!(out["rows_written"], 10_000);
    assert_eq!(out["batches"], 3);
    assert_eq!(out["mode"], "copy");
    let mut c = sql(&db.url).await;
    assert_eq!(
        scalar_i64(&mut c, "SELECT count(*) FROM bulk_rows").await,
        10_000
    );
    let row = sqlx::query(
        "SELECT label, ratio, ok, at = '2024-08-01T12:00:00Z'::timestamptz AS at_ok, tags::text AS tags, note FROM bulk_rows WHERE id = 5",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("label"), "row\t5\nwith \\ specials");
    assert_eq!(row.get::<f64, _>("ratio"), 5.25);
    assert!(!row.get::<bool, _>("ok"));
    assert!(row.get::<bool, _>("at_ok"));
    assert_eq!(row.get::<String, _>("tags"), r#"["a", 5]"#);
    assert_eq!(row.get::<Option<String>, _>("note"), None);
    let m = ctx.metrics.snapshot();
    assert_eq!(m.records_out, 10_000);
    assert!(m.bytes_out > 10_000 * 40, "{m:?}");
    drop(c);
    db.cleanup().await;
}

#[tokio::test]
async fn json_column_stores_the_whole_record_beside_mapped_columns() {
    let db = TestDb::postgres().await;
    let mut c = sql(&db.url).await;
    sqlx::query(
        "CREATE TABLE raw_events (event_id text PRIMARY KEY, user_id bigint, doc jsonb NOT NULL)",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let ctx = ctx_for(&db.url);
    let records = json!([
        {"id": "e1", "user": {"id": 10, "name": "ann"}, "kind": "click"},
        {"id": "e2", "user": {"id": 11}, "kind": "view", "extra": [1, 2]},
    ]);
    let out = run(
        &ctx,
        json!({
            "table": "raw_events", "records": records,
            "columns": {"event_id": "id", "user_id": "user.id"}, "json_column": "doc",
        }),
    )
    .await
    .expect("insert");
    assert_eq!(out["rows_written"], 2);
    let row = sqlx::query("SELECT user_id, doc->'user'->>'name' AS name, doc->>'kind' AS kind FROM raw_events WHERE event_id = 'e1'")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(row.get::<i64, _>("user_id"), 10);
    assert_eq!(row.get::<String, _>("name"), "ann");
    assert_eq!(row.get::<String, _>("kind"), "click");
    assert_eq!(
        scalar_i64(
            &mut c,
            "SELECT jsonb_array_length(doc->'extra')::bigint FROM raw_events WHERE event_id = 'e2'"
        )
        .await,
        2
    );

    // With only json_column, the record goes there whole.
    sqlx::query("CREATE TABLE only_json (doc jsonb)")
        .execute(&mut c)
        .await
        .unwrap();
    run(
        &ctx,
        json!({"table": "only_json", "records": records, "json_column": "doc", "mode": "copy"}),
    )
    .await
    .expect("copy json");
    assert_eq!(
        scalar_i64(&mut c, "SELECT count(*) FROM only_json WHERE doc ? 'kind'").await,
        2
    );
    drop(c);
    db.cleanup().await;
}

#[tokio::test]
async fn create_table_infers_types_and_quotes_names() {
    let db = TestDb::postgres().await;
    let mut c = sql(&db.url).await;
    sqlx::query(r#"CREATE SCHEMA "Stage""#)
        .execute(&mut c)
        .await
        .unwrap();
    let ctx = ctx_for(&db.url);
    let records = json!([
        {"id": 1, "Name": "a", "price": null, "ok": true, "at": "2024-08-01T00:00:00+02:00", "meta": {"k": 1}, "weird \"col\"": "x"},
        {"id": 2, "Name": "b", "price": 9.5, "ok": false, "at": "2024-08-02T00:00:00Z", "meta": {}, "weird \"col\"": "y"},
    ]);
    let args = json!({
        "table": "Stage.Items", "records": records, "create_table": true,
        "mode": "upsert", "conflict_key": ["id"],
    });
    run(&ctx, args.clone()).await.expect("create and upsert");
    run(&ctx, args)
        .await
        .expect("the table exists now; upsert again");
    let types: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_schema = 'Stage' AND table_name = 'Items' ORDER BY ordinal_position",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    let expect = [
        ("id", "bigint"),
        ("Name", "text"),
        ("price", "double precision"),
        ("ok", "boolean"),
        ("at", "timestamp with time zone"),
        ("meta", "jsonb"),
        ("weird \"col\"", "text"),
    ];
    let types: Vec<(&str, &str)> = types
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(types, expect);
    assert_eq!(
        scalar_i64(&mut c, r#"SELECT count(*) FROM "Stage"."Items""#).await,
        2
    );
    let pk = scalar_i64(
        &mut c,
        r#"SELECT count(*) FROM pg_index WHERE indrelid = '"Stage"."Items"'::regclass AND indisprimary"#,
    )
    .await;
    assert_eq!(pk, 1, "conflict_key becomes the primary key");

    // A NUL can never be part of an identifier.
    let err = run(
        &ctx,
        json!({"table": "bad\u{0}name", "records": [{"a": 1}]}),
    )
    .await
    .expect_err("NUL");
    assert!(
        matches!(&err, TaskError::Fatal(m) if m.contains("NUL")),
        "{err:?}"
    );
    drop(c);
    db.cleanup().await;
}

#[tokio::test]
async fn missing_field_is_null_and_wrong_type_names_the_record() {
    let db = TestDb::postgres().await;
    let mut c = sql(&db.url).await;
    sqlx::query("CREATE TABLE readings (sensor text, value double precision, note text)")
        .execute(&mut c)
        .await
        .unwrap();
    let ctx = ctx_for(&db.url);
    let out = run(
        &ctx,
        json!({
            "table": "readings",
            "records": [{"sensor": "a", "value": 1.5}, {"sensor": "b", "value": 2, "note": "late"}],
        }),
    )
    .await
    .expect("insert");
    assert_eq!(out["rows_written"], 2);
    assert_eq!(
        scalar_i64(
            &mut c,
            "SELECT count(*) FROM readings WHERE sensor = 'a' AND note IS NULL"
        )
        .await,
        1,
        "a missing field is written as NULL"
    );

    for mode in ["insert", "copy"] {
        let records = json!([
            {"sensor": "c", "value": 1}, {"sensor": "d", "value": 2},
            {"sensor": "e", "value": 3}, {"sensor": "f", "value": "not a number"},
            {"sensor": "g", "value": 5},
        ]);
        let err = run(
            &ctx,
            json!({"table": "readings", "records": records, "batch_size": 2, "mode": mode}),
        )
        .await
        .expect_err("wrong type");
        let TaskError::Fatal(msg) = &err else {
            panic!("{mode}: bad data is not worth a retry: {err:?}")
        };
        assert!(msg.contains("record 3"), "{mode}: {msg}");
        assert!(msg.contains("not a number"), "{mode}: {msg}");
    }
    // The batch holding the bad record was rolled back; the one before it committed.
    assert_eq!(
        scalar_i64(
            &mut c,
            "SELECT count(*) FROM readings WHERE sensor IN ('e', 'f')"
        )
        .await,
        0
    );
    assert_eq!(
        scalar_i64(&mut c, "SELECT count(*) FROM readings WHERE sensor = 'c'").await,
        2,
        "one per mode"
    );

    let err = run(&ctx, json!({"table": "nope", "records": [{"a": 1}]}))
        .await
        .expect_err("missing table");
    assert!(
        matches!(&err, TaskError::Fatal(m) if m.contains("create_table")),
        "{err:?}"
    );
    let err = run(
        &ctx,
        json!({"table": "readings", "records": [{"a": 1}], "mode": "upsert"}),
    )
    .await
    .expect_err("upsert needs a key");
    assert!(
        matches!(&err, TaskError::Fatal(m) if m.contains("conflict_key")),
        "{err:?}"
    );
    drop(c);
    db.cleanup().await;
}

#[tokio::test]
async fn unreachable_server_is_retried_then_named() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ctx = ctx_for(&format!("postgres://u:pw-secret@127.0.0.1:{port}/db"));
    let err = run(&ctx, json!({"table": "t", "records": [{"a": 1}]}))
        .await
        .expect_err("nothing listens there");
    let TaskError::Failed(msg) = &err else {
        panic!("worth a retry: {err:?}")
    };
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(!msg.contains("pw-secret"), "{msg}");
}

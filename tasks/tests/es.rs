//! `es_index` against two independent Elasticsearch-API servers (OpenSearch dialect on
//! SLUICE_TEST_OPENSEARCH, Elasticsearch 8 dialect on SLUICE_TEST_ES8; started by
//! scripts/elasticsearch.sh), plus a fixture server for overload handling.

use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};
use sluice_tasks::{Connection, Connections, Registry, TaskContext, TaskError};

/// Both servers; a missing one fails the test, saying how to start it.
async fn servers() -> Vec<(&'static str, String)> {
    let list = vec![
        (
            "opensearch",
            std::env::var("SLUICE_TEST_OPENSEARCH")
                .unwrap_or_else(|_| "http://127.0.0.1:9200".into()),
        ),
        (
            "es8",
            std::env::var("SLUICE_TEST_ES8").unwrap_or_else(|_| "http://127.0.0.1:9201".into()),
        ),
    ];
    for (name, url) in &list {
        if let Err(e) = reqwest::get(url.as_str()).await {
            panic!("{name} server at {url} is required (run scripts/elasticsearch.sh): {e}");
        }
    }
    list
}

fn ctx_for(url: &str) -> TaskContext {
    TaskContext {
        conns: Connections::from_list(vec![Connection::parse("es_default", url).expect("uri")]),
        ..TaskContext::detached("es_dag", "index_task")
    }
}

async fn run(ctx: &TaskContext, args: Value) -> Result<Value, TaskError> {
    let Value::Object(args) = args else {
        panic!("args must be an object")
    };
    let reg = Registry::builtin();
    let kind = reg.get("es_index").expect("es_index is registered");
    kind.run(ctx, args).await
}

fn unique_index(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("sluice-test-{what}-{}-{nanos}", std::process::id())
}

async fn http(method: reqwest::Method, url: String, body: Option<Value>) -> Value {
    let client = reqwest::Client::new();
    let mut req = client.request(method, &url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    resp.json().await.unwrap_or_else(|e| panic!("{url}: {e}"))
}

async fn count(base: &str, index: &str) -> u64 {
    http(
        reqwest::Method::POST,
        format!("{base}/{index}/_refresh"),
        None,
    )
    .await;
    let v = http(reqwest::Method::GET, format!("{base}/{index}/_count"), None).await;
    v["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("no count in {v}"))
}

async fn delete(base: &str, index: &str) {
    let _ = reqwest::Client::new()
        .delete(format!("{base}/{index}"))
        .send()
        .await;
}

fn docs(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "tweet": {"id": format!("t-{i}")},
                "user": format!("user{}", i % 7),
                "likes": i,
                "text": format!("hello number {i}"),
            })
        })
        .collect()
}

#[tokio::test]
async fn bulk_index_with_ids_is_idempotent_on_both_servers() {
    for (name, base) in servers().await {
        let ctx = ctx_for(&base);
        let index = unique_index("idem");
        let args = json!({
            "index": index, "records": docs(200), "id_field": "tweet.id", "batch_size": 50,
        });
        let first = run(&ctx, args.clone())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(first["indexed"], 200, "{name}: {first}");
        assert_eq!(first["created"], 200, "{name}: {first}");
        assert_eq!(first["failed"], 0, "{name}: {first}");
        assert_eq!(first["batches"], 4, "{name}: {first}");
        assert_eq!(count(&base, &index).await, 200, "{name}");

        let second = run(&ctx, args)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(second["indexed"], 200, "{name}: {second}");
        assert_eq!(second["updated"], 200, "{name}: {second}");
        assert_eq!(
            count(&base, &index).await,
            200,
            "{name}: re-run must not duplicate"
        );

        let doc = http(
            reqwest::Method::GET,
            format!("{base}/{index}/_doc/t-42"),
            None,
        )
        .await;
        assert_eq!(doc["_source"]["text"], "hello number 42", "{name}: {doc}");
        let m = ctx.metrics.snapshot();
        assert_eq!(m.records_out, 400, "{name}");
        assert!(m.bytes_out > 400 * 50, "{name}: {m:?}");
        delete(&base, &index).await;

        // Without id_field, ids come from the run and position: a retry overwrites.
        let index = unique_index("autoid");
        let args = json!({ "index": index, "records": docs(30), "refresh": true });
        run(&ctx, args.clone())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        run(&ctx, args)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            count(&base, &index).await,
            30,
            "{name}: auto ids must be stable"
        );
        delete(&base, &index).await;
    }
}

#[tokio::test]
async fn create_index_applies_settings_and_mappings_and_create_skips_existing() {
    for (name, base) in servers().await {
        let ctx = ctx_for(&base);
        let index = unique_index("create");
        let args = json!({
            "index": index,
            "records": docs(20),
            "id_field": "tweet.id",
            "op_type": "create",
            "refresh": "wait_for",
            "create_index": {
                "settings": {"index.mapping.total_fields.limit": 2000},
                "mappings": {"properties": {"likes": {"type": "long"}, "user": {"type": "keyword"}}},
            },
        });
        let first = run(&ctx, args.clone())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(first["created"], 20, "{name}: {first}");
        let settings = http(
            reqwest::Method::GET,
            format!("{base}/{index}/_settings"),
            None,
        )
        .await;
        assert_eq!(
            settings[&index]["settings"]["index"]["mapping"]["total_fields"]["limit"], "2000",
            "{name}: {settings}"
        );
        let mapping = http(
            reqwest::Method::GET,
            format!("{base}/{index}/_mapping"),
            None,
        )
        .await;
        assert_eq!(
            mapping[&index]["mappings"]["properties"]["user"]["type"], "keyword",
            "{name}: {mapping}"
        );
        // The index exists now and `create` finds every document present already.
        let second = run(&ctx, args)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(second["skipped"], 20, "{name}: {second}");
        assert_eq!(second["created"], 0, "{name}: {second}");
        assert_eq!(count(&base, &index).await, 20, "{name}");

        // `update` merges into existing documents (doc_as_upsert).
        let patch: Vec<Value> = (0..3)
            .map(|i| json!({"tweet": {"id": format!("t-{i}")}, "likes": 1000 + i}))
            .collect();
        let up = run(
            &ctx,
            json!({"index": index, "records": patch, "id_field": "tweet.id", "op_type": "update"}),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(up["indexed"], 3, "{name}: {up}");
        let doc = http(
            reqwest::Method::GET,
            format!("{base}/{index}/_doc/t-1"),
            None,
        )
        .await;
        assert_eq!(doc["_source"]["likes"], 1001, "{name}: {doc}");
        assert_eq!(doc["_source"]["text"], "hello number 1", "{name}: {doc}");
        delete(&base, &index).await;
    }
}

#[tokio::test]
async fn mapping_conflict_fails_naming_record_position_and_id() {
    for (name, base) in servers().await {
        let ctx = ctx_for(&base);
        let index = unique_index("conflict");
        let mut records = docs(10);
        records[6]["likes"] = json!({"not": "a number"});
        let err = run(
            &ctx,
            json!({
                "index": index, "records": records, "id_field": "tweet.id",
                "create_index": {"mappings": {"properties": {"likes": {"type": "long"}}}},
            }),
        )
        .await
        .expect_err("a mapping conflict must fail the try");
        let TaskError::Fatal(msg) = &err else {
            panic!("{name}: a mapping conflict is permanent, got {err:?}")
        };
        assert!(msg.contains("record 6"), "{name}: {msg}");
        assert!(msg.contains("\"t-6\""), "{name}: {msg}");
        assert!(
            msg.contains("mapper_parsing_exception") || msg.contains("document_parsing_exception"),
            "{name}: {msg}"
        );
        assert!(
            !msg.contains("record 5"),
            "{name}: only the bad record is listed: {msg}"
        );
        // Counted for sluice_task_records_failed_total{kind="es_index"}: the one
        // rejected document, the other nine indexed.
        let m = ctx.metrics.snapshot();
        assert_eq!(m.records_failed, 1, "{name}");
        assert_eq!(m.records_out, 9, "{name}");
        delete(&base, &index).await;
    }
}

#[tokio::test]
async fn bad_input_fails_before_anything_is_sent() {
    let ctx = ctx_for("http://127.0.0.1:9");
    let err = run(
        &ctx,
        json!({"index": "x", "records": [{"id": "a"}, {"other": 1}], "id_field": "id"}),
    )
    .await
    .expect_err("missing id");
    assert!(
        matches!(&err, TaskError::Fatal(m) if m.contains("record 1") && m.contains("`id`")),
        "{err:?}"
    );
    let err = run(&ctx, json!({"index": "x", "records": [1]}))
        .await
        .expect_err("not an object");
    assert!(
        matches!(&err, TaskError::Fatal(m) if m.contains("record 0")),
        "{err:?}"
    );
    let err = run(
        &ctx,
        json!({"index": "x", "records": [], "op_type": "upsert"}),
    )
    .await
    .expect_err("bad op_type");
    assert!(
        matches!(&err, TaskError::Fatal(m) if m.contains("op_type")),
        "{err:?}"
    );
}

/// What the fixture saw: each `_bulk` body and its Authorization header.
#[derive(Default)]
struct Seen {
    bodies: Vec<String>,
    auth: Vec<Option<String>>,
}

/// A fixture `_bulk` endpoint: the first request gets a 429 for its second item (as a
/// busy cluster does), later ones succeed. Answers in the ES 8 response shape.
async fn overload_fixture() -> (String, Arc<Mutex<Seen>>) {
    use axum::extract::State;
    use axum::http::HeaderMap;

    let seen = Arc::new(Mutex::new(Seen::default()));
    async fn bulk(
        State(seen): State<Arc<Mutex<Seen>>>,
        headers: HeaderMap,
        body: String,
    ) -> axum::Json<Value> {
        let mut s = seen.lock().unwrap();
        let first = s.bodies.is_empty();
        s.bodies.push(body.clone());
        s.auth.push(
            headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string()),
        );
        let lines: Vec<Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let mut items = Vec::new();
        for (n, pair) in lines.chunks(2).enumerate() {
            let id = pair[0]["index"]["_id"].clone();
            if first && n == 1 {
                items.push(json!({"index": {"_index": "busy", "_id": id, "status": 429,
                    "error": {"type": "es_rejected_execution_exception",
                              "reason": "rejected execution of coordinating operation"}}}));
            } else {
                items.push(json!({"index": {"_index": "busy", "_id": id, "_version": 1,
                    "result": "created", "status": 201,
                    "_shards": {"total": 2, "successful": 1, "failed": 0}}}));
            }
        }
        axum::Json(json!({"took": 1, "errors": first, "items": items}))
    }
    let app = axum::Router::new()
        .route("/{index}/_bulk", axum::routing::post(bulk))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://elastic:s3cret-pw@{addr}"), seen)
}

#[tokio::test]
async fn items_rejected_with_429_are_resent() {
    let (url, seen) = overload_fixture().await;
    let ctx = ctx_for(&url);
    let records: Vec<Value> = (0..3)
        .map(|i| json!({"id": format!("r{i}"), "v": i}))
        .collect();
    let out = run(
        &ctx,
        json!({"index": "busy", "records": records, "id_field": "id"}),
    )
    .await
    .expect("the rejected item is resent and succeeds");
    assert_eq!(out["indexed"], 3, "{out}");
    assert_eq!(out["created"], 3, "{out}");
    let s = seen.lock().unwrap();
    assert_eq!(s.bodies.len(), 2, "one resend");
    assert_eq!(s.bodies[0].lines().count(), 6);
    // Only the rejected document goes again.
    assert_eq!(s.bodies[1].lines().count(), 2, "{}", s.bodies[1]);
    assert!(s.bodies[1].contains("\"r1\""), "{}", s.bodies[1]);
    // Basic auth from the connection's login and password.
    assert_eq!(s.auth[0].as_deref(), Some("Basic ZWxhc3RpYzpzM2NyZXQtcHc="));
    assert_eq!(ctx.metrics.snapshot().records_out, 3);
}

#[tokio::test]
async fn unreachable_server_is_retried_then_named_without_password() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ctx = ctx_for(&format!("http://elastic:hunter22@127.0.0.1:{port}"));
    let started = std::time::Instant::now();
    let err = run(&ctx, json!({"index": "x", "records": [{"a": 1}]}))
        .await
        .expect_err("nothing listens there");
    let TaskError::Failed(msg) = &err else {
        panic!("an unreachable server is worth a retry of the task: {err:?}")
    };
    assert!(msg.contains(&format!("http://127.0.0.1:{port}")), "{msg}");
    assert!(!msg.contains("hunter22"), "{msg}");
    assert!(msg.contains("5 attempts"), "{msg}");
    // Backed off between attempts rather than failing at once.
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let _ = Map::<String, Value>::new();
}

#[tokio::test]
async fn an_id_template_renders_per_record_with_the_run_context() {
    for (name, base) in servers().await {
        let mut ctx = ctx_for(&base);
        ctx.template_context = minijinja::Value::from_serialize(json!({"ds_nodash": "20261122"}));
        let index = unique_index("idtpl");
        let args = json!({
            "index": index, "records": docs(20), "refresh": true,
            "id": "{{ record.tweet.id }}-{{ ds_nodash }}",
        });
        run(&ctx, args.clone())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let second = run(&ctx, args)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(second["updated"], 20, "{name}: {second}");
        assert_eq!(
            count(&base, &index).await,
            20,
            "{name}: re-run must not duplicate"
        );
        let doc = http(
            reqwest::Method::GET,
            format!("{base}/{index}/_doc/t-7-20261122"),
            None,
        )
        .await;
        assert_eq!(doc["_source"]["text"], "hello number 7", "{name}: {doc}");

        // A record the template cannot render fails before anything is sent, naming it.
        let mut bad = docs(3);
        bad[2] = json!({"text": "no tweet"});
        let err = run(
            &ctx,
            json!({"index": index, "records": bad, "id": "{{ record.tweet.id }}"}),
        )
        .await
        .expect_err("undefined id");
        assert!(err.to_string().contains("record 2: `id`"), "{name}: {err}");
        delete(&base, &index).await;
    }
}

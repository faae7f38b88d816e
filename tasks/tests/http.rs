//! The `http` kind against fixture servers on 127.0.0.1: pagination styles, retries on
//! 429/5xx with Retry-After, rate limiting, auth, malformed JSON, unreachable servers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use sluice_tasks::{Connection, Connections, Registry, TaskContext, TaskError};

type Q = Query<HashMap<String, String>>;

#[derive(Default)]
struct Hits {
    flaky: AtomicUsize,
    infinite: AtomicUsize,
    unavailable: AtomicUsize,
    pages: AtomicUsize,
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("fixture server");
    });
    addr
}

fn num(q: &HashMap<String, String>, k: &str, default: u64) -> u64 {
    q.get(k).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn item(i: u64) -> Value {
    json!({"id": i, "name": format!("item {i}"), "tags": ["a", "b"]})
}

async fn fixture() -> (SocketAddr, Arc<Hits>) {
    let hits = Arc::new(Hits::default());
    let router = Router::new()
        // next-url style: 3 pages of 2 items, `next` relative then absent.
        .route(
            "/next",
            get(|Query(q): Q| async move {
                let page = num(&q, "page", 1);
                let items: Vec<Value> = (0..2).map(|i| item(page * 10 + i)).collect();
                let next = (page < 3).then(|| format!("/next?page={}", page + 1));
                Json(json!({"items": items, "next": next}))
            }),
        )
        // cursor style: cursors c1, c2, then no cursor.
        .route(
            "/cursor",
            get(|Query(q): Q| async move {
                let (ids, next) = match q.get("cursor").map(String::as_str) {
                    None => (vec![1, 2], Some("c1")),
                    Some("c1") => (vec![3, 4], Some("c2")),
                    Some("c2") => (vec![5], None),
                    Some(other) => panic!("unexpected cursor {other}"),
                };
                let data: Vec<Value> = ids.into_iter().map(item).collect();
                let mut body = json!({"data": data, "meta": {}});
                if let Some(c) = next {
                    body["meta"]["next_cursor"] = json!(c);
                }
                Json(body)
            }),
        )
        // page style: pages 1..=3 hold items, page 4 is empty.
        .route(
            "/pages",
            get(|State(h): State<Arc<Hits>>, Query(q): Q| async move {
                h.pages.fetch_add(1, Ordering::SeqCst);
                let page = num(&q, "page", 0);
                let items: Vec<Value> = if (1..=3).contains(&page) {
                    vec![item(page)]
                } else {
                    vec![]
                };
                Json(Value::Array(items))
            }),
        )
        // offset style over 250 rows.
        .route(
            "/offset",
            get(|Query(q): Q| async move {
                let (off, lim) = (num(&q, "offset", 0), num(&q, "limit", 10));
                let rows: Vec<Value> = (off..(off + lim).min(250)).map(item).collect();
                Json(json!({"total": 250, "rows": rows}))
            }),
        )
        // never ends: max_pages must stop it.
        .route(
            "/infinite",
            get(|State(h): State<Arc<Hits>>, Query(q): Q| async move {
                h.infinite.fetch_add(1, Ordering::SeqCst);
                let page = num(&q, "page", 1);
                Json(json!({"items": [item(page)], "next": format!("/infinite?page={}", page + 1)}))
            }),
        )
        // 429 with Retry-After: 1 once, then 200.
        .route(
            "/flaky",
            get(|State(h): State<Arc<Hits>>| async move {
                if h.flaky.fetch_add(1, Ordering::SeqCst) == 0 {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "1")],
                        "slow down",
                    )
                        .into_response()
                } else {
                    Json(json!({"ok": true})).into_response()
                }
            }),
        )
        .route(
            "/always429",
            get(|| async {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "0")],
                    "{\"error\":\"rate limited\"}",
                )
            }),
        )
        .route(
            "/retry-in-an-hour",
            get(|| async { (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "3600")], "") }),
        )
        // 503 twice, then 200.
        .route(
            "/unavailable",
            get(|State(h): State<Arc<Hits>>| async move {
                if h.unavailable.fetch_add(1, Ordering::SeqCst) < 2 {
                    (StatusCode::SERVICE_UNAVAILABLE, "<html>maintenance</html>").into_response()
                } else {
                    Json(json!([1, 2, 3])).into_response()
                }
            }),
        )
        .route(
            "/bad",
            get(|| async {
                let body = format!(
                    "<html><body>Gateway error {}</body></html>",
                    "x".repeat(500)
                );
                ([("content-type", "application/json")], body)
            }),
        )
        .route(
            "/missing",
            get(|| async { (StatusCode::NOT_FOUND, "{\"error\":\"no such thing\"}") }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Json(json!({}))
            }),
        )
        .route(
            "/v1/items",
            get(|headers: HeaderMap| async move {
                // "user:pw" in base64.
                match headers.get("authorization").and_then(|v| v.to_str().ok()) {
                    Some("Basic dXNlcjpwdw==") => Json(json!({"items": [item(1)]})).into_response(),
                    _ => StatusCode::UNAUTHORIZED.into_response(),
                }
            }),
        )
        .route(
            "/bearer",
            get(|headers: HeaderMap, Query(q): Q| async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let custom = headers
                    .get("x-client")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if auth == "Bearer tok-123456" {
                    Json(json!({"client": custom, "query": q})).into_response()
                } else {
                    StatusCode::UNAUTHORIZED.into_response()
                }
            }),
        )
        .route(
            "/echo",
            post(|headers: HeaderMap, body: String| async move {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                Json(json!({"content_type": ct, "body": body}))
            }),
        )
        .with_state(hits.clone());
    (serve(router).await, hits)
}

fn args(v: Value) -> Map<String, Value> {
    v.as_object().expect("object").clone()
}

async fn run_with(ctx: &TaskContext, a: Value) -> Result<Value, TaskError> {
    let registry = Registry::builtin();
    let kind = registry.get("http").expect("http kind registered");
    kind.run(ctx, args(a)).await
}

async fn run(a: Value) -> Result<Value, TaskError> {
    run_with(&TaskContext::detached("d", "http"), a).await
}

fn ids(records: &Value) -> Vec<u64> {
    records
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["id"].as_u64().expect("id"))
        .collect()
}

#[tokio::test]
async fn next_url_pagination_collects_records_from_every_page() {
    let (addr, _) = fixture().await;
    let ctx = TaskContext::detached("d", "http");
    let out = run_with(
        &ctx,
        json!({"url": format!("http://{addr}/next"), "paginate": {"next_url": "$.next"}, "records": "$.items[*]"}),
    )
    .await
    .expect("succeeds");
    assert_eq!(ids(&out), vec![10, 11, 20, 21, 30, 31]);
    let m = ctx.metrics.snapshot();
    assert_eq!(m.records_in, 6);
    assert!(m.bytes_in > 100, "{m:?}");
}

#[tokio::test]
async fn cursor_pagination_stops_when_the_cursor_is_missing() {
    let (addr, _) = fixture().await;
    let out = run(json!({
        "url": format!("http://{addr}/cursor"),
        "paginate": {"cursor": "$.meta.next_cursor", "cursor_param": "cursor"},
        "records": "$.data[*]",
    }))
    .await
    .expect("succeeds");
    assert_eq!(ids(&out), vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn page_pagination_stops_at_an_empty_page_and_returns_bodies_without_records() {
    let (addr, hits) = fixture().await;
    let out = run(json!({"url": format!("http://{addr}/pages"), "paginate": {"page_param": "page", "start": 1}}))
        .await
        .expect("succeeds");
    // No `records`: one parsed body per non-empty page.
    assert_eq!(out, json!([[item(1)], [item(2)], [item(3)]]));
    assert_eq!(
        hits.pages.load(Ordering::SeqCst),
        4,
        "pages 1-3 and the empty page 4"
    );
}

#[tokio::test]
async fn offset_pagination_walks_all_rows() {
    let (addr, _) = fixture().await;
    let out = run(json!({
        "url": format!("http://{addr}/offset"),
        "paginate": {"offset_param": "offset", "limit_param": "limit", "limit": 100},
        "records": "$.rows[*]",
    }))
    .await
    .expect("succeeds");
    assert_eq!(ids(&out), (0..250).collect::<Vec<_>>());
}

#[tokio::test]
async fn max_pages_caps_an_endless_api() {
    let (addr, hits) = fixture().await;
    let out = run(json!({
        "url": format!("http://{addr}/infinite"),
        "paginate": {"next_url": "$.next"},
        "records": "$.items[*]",
        "max_pages": 4,
    }))
    .await
    .expect("succeeds");
    assert_eq!(ids(&out), vec![1, 2, 3, 4]);
    assert_eq!(hits.infinite.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn single_request_without_records_returns_the_parsed_body() {
    let (addr, _) = fixture().await;
    let out = run(json!({"url": format!("http://{addr}/next?page=3")}))
        .await
        .expect("succeeds");
    assert_eq!(out["items"][0]["id"], 30);
    assert!(out["next"].is_null());
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_and_succeeds() {
    let (addr, hits) = fixture().await;
    let started = Instant::now();
    let out = run(json!({"url": format!("http://{addr}/flaky")}))
        .await
        .expect("succeeds after the 429");
    assert_eq!(out, json!({"ok": true}));
    assert_eq!(hits.flaky.load(Ordering::SeqCst), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn retries_are_capped_with_a_clear_error() {
    let (addr, _) = fixture().await;
    let err = run(json!({"url": format!("http://{addr}/always429"), "max_attempts": 2}))
        .await
        .expect_err("always 429");
    let msg = err.to_string();
    assert!(matches!(err, TaskError::Failed(_)), "{err:?}");
    assert!(
        msg.contains("429") && msg.contains("after 2 attempts") && msg.contains("/always429"),
        "{msg}"
    );

    // A Retry-After beyond the budget fails at once instead of blocking a worker.
    let started = Instant::now();
    let err =
        run(json!({"url": format!("http://{addr}/retry-in-an-hour"), "max_retry_wait": "10s"}))
            .await
            .expect_err("over budget");
    let msg = err.to_string();
    assert!(
        msg.contains("max_retry_wait") && msg.contains("1h"),
        "{msg}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let (addr, hits) = fixture().await;
    let out = run(json!({"url": format!("http://{addr}/unavailable"), "retry_delay": "20ms"}))
        .await
        .expect("succeeds on the third attempt");
    assert_eq!(out, json!([1, 2, 3]));
    assert_eq!(hits.unavailable.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn malformed_json_fails_with_status_url_and_a_short_snippet() {
    let (addr, _) = fixture().await;
    let err = run(json!({
        "url": format!("http://{addr}/bad"),
        "query": {"api_key": "SECRET-VALUE-123", "q": "games"},
    }))
    .await
    .expect_err("not JSON");
    let msg = err.to_string();
    assert!(
        msg.contains("not valid JSON") && msg.contains("HTTP 200"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("{addr}/bad")) && msg.contains("q=games"),
        "{msg}"
    );
    assert!(msg.contains("<html><body>Gateway error"), "{msg}");
    assert!(!msg.contains("SECRET-VALUE-123"), "{msg}");
    assert!(
        !msg.contains(&"x".repeat(201)),
        "snippet must be at most 200 chars: {msg}"
    );
}

#[tokio::test]
async fn an_unreachable_port_fails_after_retries_naming_host_and_port() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let err = run(json!({"url": format!("http://127.0.0.1:{port}/x"), "max_attempts": 3, "retry_delay": "20ms"}))
        .await
        .expect_err("nothing listens");
    let msg = err.to_string();
    assert!(matches!(err, TaskError::Failed(_)), "{err:?}");
    assert!(
        msg.contains(&format!("127.0.0.1:{port}")) && msg.contains("after 3 attempts"),
        "{msg}"
    );
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let (addr, _) = fixture().await;
    let err = run(json!({"url": format!("http://{addr}/missing")}))
        .await
        .expect_err("404");
    assert!(
        matches!(&err, TaskError::Fatal(m) if m.contains("404") && m.contains("no such thing")),
        "{err:?}"
    );
}

#[tokio::test]
async fn timeouts_fail_the_request() {
    let (addr, _) = fixture().await;
    let started = Instant::now();
    let err =
        run(json!({"url": format!("http://{addr}/slow"), "timeout": "200ms", "max_attempts": 1}))
            .await
            .expect_err("too slow");
    assert!(err.to_string().contains("timed out after 200ms"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_connection_gives_base_url_and_basic_auth() {
    let (addr, _) = fixture().await;
    let conn = Connection::parse("api", &format!("http://user:pw@{addr}/v1")).expect("uri");
    let ctx = TaskContext {
        conns: Connections::from_list(vec![conn]),
        ..TaskContext::detached("d", "http")
    };
    let out = run_with(
        &ctx,
        json!({"connection": "api", "url": "items", "records": "$.items[*]"}),
    )
    .await
    .expect("authorised");
    assert_eq!(ids(&out), vec![1]);
    let err = run_with(&ctx, json!({"connection": "nope", "url": "items"}))
        .await
        .expect_err("undefined");
    assert!(err.to_string().contains("SLUICE_CONN_NOPE"), "{err}");
}

#[tokio::test]
async fn bearer_headers_query_and_bodies_are_sent() {
    let (addr, _) = fixture().await;
    let out = run(json!({
        "url": format!("http://{addr}/bearer"),
        "bearer": "tok-123456",
        "headers": {"X-Client": "sluice-test"},
        "query": {"appid": 570, "tags": ["a", "b"]},
    }))
    .await
    .expect("authorised");
    assert_eq!(out["client"], "sluice-test");
    assert_eq!(out["query"]["appid"], "570");

    let out =
        run(json!({"method": "post", "url": format!("http://{addr}/echo"), "json": {"a": [1, 2]}}))
            .await
            .expect("posted");
    assert_eq!(out["content_type"], "application/json");
    assert_eq!(
        serde_json::from_str::<Value>(out["body"].as_str().expect("s")).expect("json"),
        json!({"a": [1, 2]})
    );

    let out = run(json!({"method": "POST", "url": format!("http://{addr}/echo"), "form": {"name": "a b", "n": 1}}))
        .await
        .expect("posted");
    assert_eq!(out["content_type"], "application/x-www-form-urlencoded");
    assert_eq!(out["body"], "name=a+b&n=1");
}

#[tokio::test]
async fn the_rate_limit_spaces_requests_per_host() {
    let (addr, hits) = fixture().await;
    let started = Instant::now();
    // Burst of 2, then one request per 1/4 s: pages 3 and 4 wait ~0.25 s each.
    let out = run(json!({
        "url": format!("http://{addr}/pages"),
        "paginate": {"page_param": "page"},
        "rate_limit": "4/s",
        "rate_burst": 2,
    }))
    .await
    .expect("succeeds");
    assert_eq!(out.as_array().map(Vec::len), Some(3));
    assert_eq!(hits.pages.load(Ordering::SeqCst), 4);
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn bad_arguments_are_fatal_and_named() {
    let err = run(json!({"url": "/relative/without/connection"}))
        .await
        .expect_err("bad url");
    assert!(
        matches!(&err, TaskError::Fatal(m) if m.contains("`url`")),
        "{err:?}"
    );
    let err = run(json!({"url": "http://127.0.0.1:1/", "rate_limit": "fast"}))
        .await
        .expect_err("bad rate");
    assert!(
        matches!(&err, TaskError::Fatal(m) if m.contains("rate_limit")),
        "{err:?}"
    );
    let err = run(
        json!({"url": "http://127.0.0.1:1/", "paginate": {"page_param": "p", "cursor": "$.c"}}),
    )
    .await
    .expect_err("two styles");
    assert!(
        matches!(&err, TaskError::Fatal(m) if m.contains("paginate")),
        "{err:?}"
    );
    let err = run(json!({"url": "http://127.0.0.1:1/", "records": "$[[["}))
        .await
        .expect_err("bad path");
    assert!(
        matches!(&err, TaskError::Fatal(m) if m.contains("records")),
        "{err:?}"
    );
}

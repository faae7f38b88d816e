//! DAG checkpoints: a cursor advances only when its DAG run succeeds — in Redis (the
//! `redis_default` connection) and in the store — so a failed run re-reads the same
//! window. Runs against the real Redis server `.ci/run` starts.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::Sandbox;
use serde_json::{json, Value};
use sluice::local_run::run_to_completion;
use sluice_core::loader::parse_dag;
use sluice_core::Dag;
use sluice_store::testing::TestDb;
use sluice_store::{now, NewRun, Store};
use sluice_tasks::Registry;

/// Where tests find Redis: `SLUICE_TEST_REDIS_URL`, default the local server. Tests
/// fail (never skip) when it is unreachable: `.ci/run` starts it.
fn redis_url() -> String {
    std::env::var("SLUICE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn redis() -> redis::aio::MultiplexedConnection {
    let url = redis_url();
    redis::Client::open(url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} is required for this test: {e}"))
}

async fn hget(key: &str, field: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async(&mut redis().await)
        .await
        .expect("HGET")
}

fn cursor_dag(dag_id: &str) -> Dag {
    parse_dag(
        &cursor_source(dag_id),
        Path::new("cursor.toml"),
        &Registry::builtin(),
    )
    .expect("valid DAG")
}

fn config(home: &Path, url: &str, redis: Option<&str>) -> sluice::config::Config {
    let mut connections = BTreeMap::new();
    if let Some(r) = redis {
        connections.insert("redis_default".to_string(), r.to_string());
    }
    sluice::config::Config {
        home: home.to_path_buf(),
        database_url: Some(url.to_string()),
        connections,
        ..Default::default()
    }
}

/// Runs the DAG once; returns the run's final state and the window `fetch` read.
async fn run_once(
    store: &Store,
    cfg: &sluice::config::Config,
    dag: &Dag,
    n: i64,
    fail: bool,
) -> (String, Value) {
    let logical = now() + chrono::Duration::seconds(n);
    let run = run_to_completion(
        store,
        &Registry::builtin(),
        sluice::executor_config(cfg).expect("config"),
        dag,
        NewRun::manual(&dag.dag_id, logical, None, json!({ "fail": fail })),
    )
    .await
    .expect("run");
    let state = store
        .run_by_pk(run.id)
        .await
        .expect("run row")
        .expect("run exists")
        .state;
    let xcoms = store.xcoms(run.id, None).await.expect("xcoms");
    let fetch = xcoms
        .iter()
        .find(|x| x.task_id == "fetch")
        .expect("fetch pushed its window");
    let window = match &fetch.value {
        sluice_store::XcomValue::Inline(t) => serde_json::from_str(t).expect("json"),
        other => panic!("unexpected artifact {other:?}"),
    };
    (state, window)
}

#[tokio::test]
async fn redis_cursor_advances_only_with_successful_runs() {
    let home = Sandbox::new();
    for (backend, db) in TestDb::both().await {
        let dag_id = format!("cursor_{backend}_{}", std::process::id());
        let key = sluice::checkpoints::redis_key(&dag_id);
        forget(&key).await;
        let dag = cursor_dag(&dag_id);
        let cfg = config(home.path(), &db.url, Some(&redis_url()));
        let start = 76561197960499900i64;

        // A run that fails downstream: fetch proposed a new cursor, nothing moves.
        let (state, window) = run_once(&db.store, &cfg, &dag, 1, true).await;
        assert_eq!(state, "failed", "{backend}");
        assert_eq!(window["from"], start, "{backend}");
        assert_eq!(
            hget(&key, "last_id").await,
            None,
            "{backend}: failed run wrote Redis"
        );

        // The next run re-reads the same window, succeeds, and moves the cursor.
        let (state, window) = run_once(&db.store, &cfg, &dag, 2, false).await;
        assert_eq!(state, "success", "{backend}");
        assert_eq!(
            window["from"], start,
            "{backend}: a failed run must not advance"
        );
        assert_eq!(
            hget(&key, "last_id").await.as_deref(),
            Some((start + 10).to_string().as_str()),
            "{backend}"
        );
        assert_eq!(hget(&key, "pages").await.as_deref(), Some("1"), "{backend}");

        // The run after that starts where it ended.
        let (_, window) = run_once(&db.store, &cfg, &dag, 3, false).await;
        assert_eq!(window["from"], start + 10, "{backend}");
        assert_eq!(
            hget(&key, "last_id").await.as_deref(),
            Some((start + 20).to_string().as_str())
        );

        // An operator resets the cursor in Redis; the next run honours it.
        let _: () = redis::cmd("HSET")
            .arg(&key)
            .arg("last_id")
            .arg("500")
            .query_async(&mut redis().await)
            .await
            .expect("HSET");
        let (_, window) = run_once(&db.store, &cfg, &dag, 4, false).await;
        assert_eq!(window["from"], 500, "{backend}");
        assert_eq!(hget(&key, "last_id").await.as_deref(), Some("510"));
        assert_eq!(hget(&key, "pages").await.as_deref(), Some("3"));
        forget(&key).await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn queued_checkpoints_reach_redis_and_never_go_back() {
    // Values committed by a process that died before writing Redis wait in the
    // outbox; the next read writes them (newest wins) before reading.
    let db = TestDb::sqlite().await;
    let dag_id = format!("cursor_outbox_{}", std::process::id());
    let key = sluice::checkpoints::redis_key(&dag_id);
    forget(&key).await;
    let dag = cursor_dag(&dag_id);
    let sql = sqlx::SqlitePool::connect(&db.url).await.expect("sqlite");
    // Entry n was committed n seconds after midnight.
    let queue = |id: i64, name: &'static str, value: &'static str| {
        let sql = sql.clone();
        let dag_id = dag_id.clone();
        async move {
            sqlx::query(
                "INSERT INTO checkpoint_outbox (id, dag_id, name, value, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(dag_id)
            .bind(name)
            .bind(value)
            .bind(format!("2026-11-22T00:00:{id:02}Z"))
            .execute(&sql)
            .await
            .expect("queue");
        }
    };
    queue(1, "last_id", "110").await;
    queue(2, "pages", "1").await;
    queue(3, "last_id", "120").await;
    let conns = sluice_tasks::Connections::load(&BTreeMap::from([(
        "redis_default".to_string(),
        redis_url(),
    )]))
    .expect("connections");
    let checkpoints = sluice::checkpoints::Checkpoints::new(db.store.clone(), &conns);
    let current = checkpoints.current(&dag).await.expect("current");
    assert_eq!(current["last_id"], 120);
    assert_eq!(current["pages"], 1);
    assert_eq!(hget(&key, "last_id").await.as_deref(), Some("120"));
    assert!(db
        .store
        .checkpoint_outbox(10)
        .await
        .expect("outbox")
        .is_empty());

    // A slow second flusher replays the older entry: it must not roll Redis back.
    queue(1, "last_id", "110").await;
    assert_eq!(checkpoints.flush().await.expect("flush"), 1);
    assert_eq!(hget(&key, "last_id").await.as_deref(), Some("120"));

    // Another store (a fresh database, `dags test`'s throwaway one) numbers its outbox
    // from 1 again: a later commit from it must still win.
    let other = TestDb::sqlite().await;
    let other_sql = sqlx::SqlitePool::connect(&other.url).await.expect("sqlite");
    sqlx::query(
        "INSERT INTO checkpoint_outbox (id, dag_id, name, value, created_at) \
         VALUES (1, $1, 'last_id', '130', '2026-11-22T00:01:00Z')",
    )
    .bind(&dag_id)
    .execute(&other_sql)
    .await
    .expect("queue");
    sluice::checkpoints::Checkpoints::new(other.store.clone(), &conns)
        .flush()
        .await
        .expect("flush");
    assert_eq!(hget(&key, "last_id").await.as_deref(), Some("130"));
    other_sql.close().await;
    other.cleanup().await;

    // An unreachable Redis is an error that names it, after retries.
    let dead = sluice_tasks::Connections::load(&BTreeMap::from([(
        "redis_default".to_string(),
        "redis://127.0.0.1:1".to_string(),
    )]))
    .expect("connections");
    let err = sluice::checkpoints::Checkpoints::new(db.store.clone(), &dead)
        .current(&dag)
        .await
        .expect_err("Redis is down");
    assert!(
        err.contains("Redis redis://127.0.0.1:1") && err.contains("after 3 attempts"),
        "{err}"
    );
    forget(&key).await;
    sql.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn store_cursor_without_redis_and_dags_show() {
    let mut home = Sandbox::new();
    let url = home.sqlite_url();
    home.set_env("SLUICE_DATABASE_URL", &url);
    let store = Store::connect(&url).await.expect("store");
    store.migrate().await.expect("migrate");
    let dag = cursor_dag("cursor_store");
    let cfg = config(home.path(), &url, None);

    let (state, _) = run_once(&store, &cfg, &dag, 1, true).await;
    assert_eq!(state, "failed");
    let (state, window) = run_once(&store, &cfg, &dag, 2, false).await;
    assert_eq!(state, "success");
    assert_eq!(window["from"], 76561197960499900i64);
    let (_, window) = run_once(&store, &cfg, &dag, 3, false).await;
    assert_eq!(window["from"], 76561197960499910i64);
    store.close().await;

    // `dags show` reports the current values and where they live.
    home.write_dag("cursor.toml", &cursor_source("cursor_store"));
    let out = home.ok(&["dags", "show", "cursor_store"]);
    let text = out.stdout.clone();
    assert!(
        text.contains("checkpoints (in the metadata store"),
        "{text}"
    );
    assert!(
        text.contains("last_id") && text.contains("76561197960499920"),
        "{text}"
    );
    assert!(text.contains("initial 76561197960499900"), "{text}");
    let out = home.ok(&["dags", "show", "cursor_store", "--json"]);
    let v = out.json();
    assert_eq!(v["checkpoints"]["last_id"], 76561197960499920i64, "{v}");
    assert_eq!(v["checkpoints"]["pages"], 2, "{v}");
}

/// Removes a DAG's checkpoint hashes from Redis.
async fn forget(key: &str) {
    let _: () = redis::cmd("DEL")
        .arg(key)
        .arg(format!("{key}:seq"))
        .query_async(&mut redis().await)
        .await
        .expect("DEL");
}

/// A DAG whose `fetch` reads the window after `last_id`, reports the highest id it
/// "saw", and proposes it as the new cursor; `load` fails when the run's conf says so.
fn cursor_source(dag_id: &str) -> String {
    format!(
        r#"
[dag]
id = "{dag_id}"

[params]
fail = false

[checkpoints]
last_id = 76561197960499900
pages = 0

[tasks.fetch]
kind = "shell"
command = "echo '{{\"from\": {{{{ checkpoint.last_id }}}}, \"max_id\": {{{{ checkpoint.last_id + 10 }}}}}}'"
checkpoint_update = {{ last_id = "{{{{ result.max_id }}}}", pages = "{{{{ checkpoint.pages + 1 }}}}" }}

[tasks.load]
kind = "shell"
upstream = ["fetch"]
command = "test '{{{{ params.fail }}}}' != 'True' && test '{{{{ params.fail }}}}' != 'true'"
"#
    )
}

//! The shipped pipeline DAGs end to end: `sluice dags test` against the fixture
//! servers and real Kafka-protocol, Elasticsearch-API and PostgreSQL servers, checked
//! with independent clients.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Sandbox;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use sluice_store::testing::pg_admin_url;

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

fn repo_dags() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("dags")
}

/// Every message of `topic`: (partition, key, value).
fn read_topic(broker: &str, topic: &str) -> Vec<(i32, String, Value)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set(
            "group.id",
            format!("pipelines-check-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = md.topics()[0].partitions().len();
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..partitions as i32 {
        let (_, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        ends.insert(p, high);
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    let total: i64 = ends.values().sum();
    c.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while (out.len() as i64) < total && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(500)) {
            let m = m.expect("message");
            out.push((
                m.partition(),
                String::from_utf8(m.key().expect("key").to_vec()).expect("utf8"),
                serde_json::from_slice(m.payload().expect("payload")).expect("json"),
            ));
        }
    }
    assert_eq!(out.len() as i64, total, "read the whole topic");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steam_current_players_reaches_kafka_elasticsearch_and_postgres_without_duplicates() {
    let fixtures = sluice_fixtures::Fixtures::new(Default::default());
    let server = sluice_fixtures::spawn(fixtures.router(), "127.0.0.1:0")
        .await
        .expect("fixture server");
    let broker = env_or("SLUICE_TEST_KAFKA", "127.0.0.1:9092");
    let es = env_or("SLUICE_TEST_OPENSEARCH", "http://127.0.0.1:9200");
    let pg = pg_admin_url();
    let tag = format!("t{}x{}", std::process::id(), rand::random::<u32>());
    let (topic, prefix, table) = (
        format!("steam-players-{tag}"),
        format!("steam-players-{tag}"),
        format!("steam_player_counts_{tag}"),
    );
    let mut home = Sandbox::new();
    home.set_env("SLUICE_DAGS_FOLDER", repo_dags().to_str().expect("path"));
    home.set_env("SLUICE_CONN_KAFKA_DEFAULT", &format!("kafka://{broker}"));
    home.set_env("SLUICE_CONN_ES_DEFAULT", &es);
    home.set_env("SLUICE_CONN_PG_DEFAULT", &pg);
    let conf = json!({
        "steam_base_url": format!("{}/steam", server.url()),
        "topic": topic, "index_prefix": prefix, "table": table,
    })
    .to_string();
    let args = [
        "dags",
        "test",
        "steam_current_players",
        "--date",
        "2026-11-22T06:00:00Z",
        "--conf",
        conf.as_str(),
    ];
    // Twice: the second run must add its own records and duplicate none.
    for round in 1..=2 {
        let home = &home;
        let run = tokio::task::block_in_place(|| home.run(&args));
        assert!(run.success(), "round {round}: {}", run.describe());
    }

    // Kafka: 5 games a run, keyed by game name, spread over the topic's 3 partitions.
    let messages = read_topic(&broker, &topic);
    assert_eq!(messages.len(), 10, "{messages:?}");
    let mut key_partition = BTreeMap::new();
    for (p, key, value) in &messages {
        assert_eq!(value["game"], json!(key), "keyed by game name");
        assert_eq!(*key_partition.entry(key.clone()).or_insert(*p), *p);
    }
    assert_eq!(key_partition.len(), 5);
    let records: BTreeSet<(i64, String)> = messages
        .iter()
        .map(|(_, _, v)| {
            (
                v["appid"].as_i64().expect("appid"),
                v["fetched_at"].as_str().expect("fetched_at").to_string(),
            )
        })
        .collect();

    // Elasticsearch: one document per distinct record, searchable and aggregatable.
    let http = reqwest::Client::new();
    let index = format!("{prefix}-20261122");
    let count = es_count(&es, &index).await;
    assert_eq!(count["count"], records.len(), "{count}");
    let agg: Value = http
        .post(format!("{es}/{index}/_search"))
        .json(&json!({"size": 0, "aggs": {"games": {"terms": {"field": "game", "size": 10}}}}))
        .send()
        .await
        .expect("search")
        .json()
        .await
        .expect("json");
    let buckets = agg["aggregations"]["games"]["buckets"]
        .as_array()
        .unwrap_or_else(|| panic!("terms aggregation: {agg}"));
    assert_eq!(buckets.len(), 5, "{agg}");

    // PostgreSQL: the same records, once each.
    let (rows, distinct): (i64, i64) = {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&pg).await.expect("pg");
        let r = sqlx::query_as(&format!(
            "SELECT COUNT(*), COUNT(DISTINCT (appid, fetched_at)) FROM \"{table}\""
        ))
        .fetch_one(&mut c)
        .await
        .expect("count rows");
        sqlx::query(&format!("DROP TABLE \"{table}\""))
            .execute(&mut c)
            .await
            .expect("drop");
        r
    };
    assert_eq!(rows, distinct, "no duplicate rows");
    assert_eq!(rows as usize, records.len());
    let _ = http.delete(format!("{es}/{index}")).send().await;
}

/// Sets the modification time of `files` a minute back (past the DAG's `min_age`).
fn age_files(files: &[std::path::PathBuf]) {
    let status = std::process::Command::new("touch")
        .arg("-d")
        .arg("1 minute ago")
        .args(files)
        .status()
        .expect("touch");
    assert!(status.success());
}

fn txt_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .collect()
}

async fn es_ids(es: &str, index: &str) -> Vec<String> {
    let http = reqwest::Client::new();
    let _ = http.post(format!("{es}/{index}/_refresh")).send().await;
    let v: Value = http
        .post(format!("{es}/{index}/_search"))
        .json(&json!({"size": 1000, "_source": false}))
        .send()
        .await
        .expect("search")
        .json()
        .await
        .expect("json");
    let mut ids: Vec<String> = v["hits"]["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("search: {v}"))
        .iter()
        .map(|h| h["_id"].as_str().expect("id").to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn file_ingest_indexes_every_file_once_through_a_killed_scheduler_and_archives_it() {
    let _serial = common::serial();
    let broker = env_or("SLUICE_TEST_KAFKA", "127.0.0.1:9092");
    let es = env_or("SLUICE_TEST_OPENSEARCH", "http://127.0.0.1:9200");
    let tag = format!("fi{}x{}", std::process::id(), rand::random::<u32>());
    let mut home = Sandbox::new();
    std::fs::copy(
        repo_dags().join("file_ingest.toml"),
        home.dags().join("file_ingest.toml"),
    )
    .expect("copy DAG");
    home.set_env("SLUICE_CONN_KAFKA_DEFAULT", &format!("kafka://{broker}"));
    home.set_env("SLUICE_CONN_ES_DEFAULT", &es);
    let inbox = home.path().join("inbox");
    let archive = home.path().join("archive");
    let settings = json!({"inbox": inbox, "archive": archive, "topic": tag, "index": tag});
    home.ok(&["variables", "set", "file_ingest", &settings.to_string()]);
    home.ok(&[
        "fixtures",
        "files",
        inbox.to_str().expect("path"),
        "--count",
        "12",
    ]);
    age_files(&txt_files(&inbox));

    // The scheduler starts the latest interval's run at once (catchup = false); kill it
    // in the middle of that run.
    let mut scheduler = home.spawn(&["scheduler"]);
    let runs = home.wait_runs(
        "file_ingest",
        "a running run",
        Duration::from_secs(60),
        &[&scheduler],
        |r| r.iter().any(|r| r["state"] == "running"),
    );
    scheduler.kill9();
    let first = runs[0]["run_id"].as_str().expect("run id").to_string();
    let state_at_kill = home.runs("file_ingest").expect("runs")[0]["state"].clone();
    assert_eq!(state_at_kill, "running", "the kill must interrupt the run");

    // Restarted, the dead worker's try is retried and the run completes.
    let scheduler = home.spawn(&["scheduler"]);
    home.wait_runs(
        "file_ingest",
        "the interrupted run to succeed",
        Duration::from_secs(120),
        &[&scheduler],
        |r| {
            r.iter()
                .any(|r| r["run_id"] == first.as_str() && r["state"] == "success")
        },
    );
    let ids = common::block_on(es_ids(&es, &tag));
    assert_eq!(ids.len(), 12, "every file indexed exactly once: {ids:?}");
    assert!(
        ids.iter()
            .all(|id| id.starts_with("doc_") && id.contains(".txt@")),
        "{ids:?}"
    );

    // New files and a second run: only they are added, and the first batch is archived.
    home.ok(&[
        "fixtures",
        "files",
        home.path().join("more").to_str().expect("path"),
        "--count",
        "15",
    ]);
    let mut new_files = Vec::new();
    for n in 13..=15 {
        let name = format!("doc_{n:04}.txt");
        std::fs::rename(home.path().join("more").join(&name), inbox.join(&name)).expect("move");
        new_files.push(inbox.join(&name));
    }
    age_files(&new_files);
    let trigger = home.ok(&["dags", "trigger", "file_ingest"]);
    assert!(
        trigger.stdout.contains("Created run"),
        "{}",
        trigger.describe()
    );
    home.wait_runs(
        "file_ingest",
        "the triggered run to succeed",
        Duration::from_secs(120),
        &[&scheduler],
        |r| {
            r.iter().filter(|r| r["state"] == "success").count() >= 2
                && !r
                    .iter()
                    .any(|r| r["state"] == "running" || r["state"] == "queued")
        },
    );
    let ids = common::block_on(es_ids(&es, &tag));
    assert_eq!(ids.len(), 15, "{ids:?}");
    // The first run's files are archived by the next run (a scheduled run at the turn
    // of the minute may have archived the second batch too); none is lost.
    let archived = std::fs::read_dir(&archive).map(|d| d.count()).unwrap_or(0);
    let left = std::fs::read_dir(&inbox).expect("inbox").count();
    assert!(archived >= 12, "{archived} archived");
    assert_eq!(archived + left, 15, "{archived} archived, {left} left");

    // Kafka holds every file (a killed run may have sent some twice: at-least-once),
    // keyed by file name, on the topic's 3 partitions.
    let messages = read_topic(&broker, &tag);
    let names: BTreeSet<&str> = messages.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(names.len(), 15);
    let partitions: BTreeSet<i32> = messages.iter().map(|(p, _, _)| *p).collect();
    assert!(
        partitions.len() > 1 && partitions.iter().all(|p| *p < 3),
        "{partitions:?}"
    );
    for (_, key, value) in &messages {
        assert_eq!(value["fileName"], json!(key));
        assert!(
            value["subject"].as_str().is_some_and(|s| !s.is_empty()),
            "{value}"
        );
    }
    common::block_on(async {
        let _ = reqwest::Client::new()
            .delete(format!("{es}/{tag}"))
            .send()
            .await;
    });
}

/// Refreshes `index` and counts its documents (`_count`'s answer).
async fn es_count(es: &str, index: &str) -> Value {
    let http = reqwest::Client::new();
    let _ = http.post(format!("{es}/{index}/_refresh")).send().await;
    http.get(format!("{es}/{index}/_count"))
        .send()
        .await
        .expect("count")
        .json()
        .await
        .expect("json")
}

/// Starts a scheduler, waits for the DAG's first successful run, triggers a second and
/// waits until it succeeded and nothing is left running. Returns the scheduler (kept
/// alive by the caller) and the DAG's runs, newest first.
fn two_successful_runs(home: &Sandbox, dag_id: &str) -> (common::Daemon, Vec<Value>) {
    let scheduler = home.spawn(&["scheduler"]);
    home.wait_runs(
        dag_id,
        "the first run to succeed",
        Duration::from_secs(120),
        &[&scheduler],
        |r| r.iter().any(|r| r["state"] == "success"),
    );
    home.ok(&["dags", "trigger", dag_id]);
    let runs = home.wait_runs(
        dag_id,
        "the second run to succeed",
        Duration::from_secs(120),
        &[&scheduler],
        |r| {
            r.iter().filter(|r| r["state"] == "success").count() >= 2
                && !r
                    .iter()
                    .any(|r| r["state"] == "running" || r["state"] == "queued")
        },
    );
    (scheduler, runs)
}

/// A sandbox whose DAG folder holds only `dag_file` from the repository, with the Kafka
/// and Elasticsearch connections of the test servers.
fn pipeline_sandbox(dag_file: &str, broker: &str, es: &str) -> Sandbox {
    let mut home = Sandbox::new();
    std::fs::copy(repo_dags().join(dag_file), home.dags().join(dag_file)).expect("copy DAG");
    home.set_env("SLUICE_CONN_KAFKA_DEFAULT", &format!("kafka://{broker}"));
    home.set_env("SLUICE_CONN_ES_DEFAULT", es);
    home
}

#[test]
fn csv_catalog_indexes_rows_once_and_answers_aggregations() {
    let _serial = common::serial();
    let broker = env_or("SLUICE_TEST_KAFKA", "127.0.0.1:9092");
    let es = env_or("SLUICE_TEST_OPENSEARCH", "http://127.0.0.1:9200");
    let tag = format!("cc{}x{}", std::process::id(), rand::random::<u32>());
    let home = pipeline_sandbox("csv_catalog.toml", &broker, &es);
    let inbox = home.path().join("catalog");
    let archive = home.path().join("done");
    let settings = json!({"inbox": inbox, "archive": archive, "topic": tag, "index": tag});
    home.ok(&["variables", "set", "csv_catalog", &settings.to_string()]);
    let csv = inbox.join("titles.csv");
    home.ok(&[
        "fixtures",
        "csv",
        csv.to_str().expect("path"),
        "--rows",
        "1500",
    ]);
    age_files(std::slice::from_ref(&csv));

    // A second run finds no new file: it sends nothing, and archives the first file.
    let (_scheduler, _runs) = two_successful_runs(&home, "csv_catalog");

    let messages = read_topic(&broker, &tag);
    assert_eq!(messages.len(), 1500, "each row published once");
    let keys: BTreeSet<&str> = messages.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(keys.len(), 1500);
    assert!(
        archive.join("titles.csv").exists(),
        "archived after success"
    );
    assert!(!csv.exists());

    common::block_on(async {
        let http = reqwest::Client::new();
        let _ = http.post(format!("{es}/{tag}/_refresh")).send().await;
        let v: Value = http
            .post(format!("{es}/{tag}/_search"))
            .json(&json!({
                "size": 0,
                "aggs": {
                    "by_country": {"terms": {"field": "country", "size": 5}},
                    "top_genres": {"terms": {"field": "listed_in", "size": 5}},
                    "by_year_type": {"terms": {"field": "release_year", "size": 3},
                                     "aggs": {"type": {"terms": {"field": "type"}}}},
                },
            }))
            .send()
            .await
            .expect("search")
            .json()
            .await
            .expect("json");
        assert_eq!(v["hits"]["total"]["value"], 1500, "{v}");
        let countries = v["aggregations"]["by_country"]["buckets"]
            .as_array()
            .expect("buckets");
        assert_eq!(countries.len(), 5, "{v}");
        // Countries are lists: a title counts for each of its countries.
        let genres = v["aggregations"]["top_genres"]["buckets"]
            .as_array()
            .expect("buckets");
        assert!(genres[0]["doc_count"].as_u64().unwrap_or(0) > 50, "{v}");
        let year = &v["aggregations"]["by_year_type"]["buckets"][0];
        let types: BTreeSet<&str> = year["type"]["buckets"]
            .as_array()
            .expect("types")
            .iter()
            .filter_map(|b| b["key"].as_str())
            .collect();
        assert!(
            types.iter().all(|t| *t == "Movie" || *t == "TV Show"),
            "{v}"
        );
        let _ = http.delete(format!("{es}/{tag}")).send().await;
    });
}

#[test]
fn keyword_stream_indexes_heavy_posts_once_with_a_redis_cursor() {
    let _serial = common::serial();
    let broker = env_or("SLUICE_TEST_KAFKA", "127.0.0.1:9092");
    let es = env_or("SLUICE_TEST_OPENSEARCH", "http://127.0.0.1:9200");
    let redis_url = env_or("SLUICE_TEST_REDIS_URL", "redis://127.0.0.1:6379");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let fixtures = sluice_fixtures::Fixtures::new(sluice_fixtures::FixturesConfig {
        posts: sluice_fixtures::PostsConfig {
            per_query: 250,
            ..Default::default()
        },
        ..Default::default()
    });
    let server = rt
        .block_on(sluice_fixtures::spawn(fixtures.router(), "127.0.0.1:0"))
        .expect("fixture server");
    let tag = format!("ks{}x{}", std::process::id(), rand::random::<u32>());
    let mut home = pipeline_sandbox("keyword_stream.toml", &broker, &es);
    home.set_env("SLUICE_CONN_REDIS_DEFAULT", &redis_url);
    // Start from the DAG's initial cursor (an earlier run may have left one).
    rt.block_on(async {
        let mut c = redis::Client::open(redis_url.as_str())
            .expect("redis")
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection");
        let key = sluice::checkpoints::redis_key("keyword_stream");
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .arg(format!("{key}:seq"))
            .query_async(&mut c)
            .await
            .expect("DEL");
    });
    let settings = json!({
        "url": format!("{}/posts/2/tweets/search/recent", server.url()),
        "keyword": tag, "topic": tag, "index_prefix": tag,
    });
    home.ok(&["variables", "set", "keyword_stream", &settings.to_string()]);

    let (_scheduler, runs) = two_successful_runs(&home, "keyword_stream");
    let first = runs.last().expect("the first run");
    let day = first["logical_date"].as_str().expect("logical date")[..10].replace('-', "");

    // Kafka has each post once: the second run asked only for posts newer than the cursor.
    let messages = read_topic(&broker, &tag);
    assert_eq!(messages.len(), 250);
    let ids: BTreeSet<&str> = messages.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(ids.len(), 250);
    let newest = ids.iter().max().expect("ids").to_string();
    let cursor: Option<String> = rt.block_on(async {
        let mut c = redis::Client::open(redis_url.as_str())
            .expect("redis")
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection");
        let v: Option<String> = redis::cmd("HGET")
            .arg(sluice::checkpoints::redis_key("keyword_stream"))
            .arg("newest_id")
            .query_async(&mut c)
            .await
            .expect("HGET");
        let _: () = redis::cmd("DEL")
            .arg(sluice::checkpoints::redis_key("keyword_stream"))
            .arg(format!(
                "{}:seq",
                sluice::checkpoints::redis_key("keyword_stream")
            ))
            .query_async(&mut c)
            .await
            .expect("DEL");
        v
    });
    assert_eq!(cursor.as_deref(), Some(newest.as_str()));

    // Elasticsearch: every post, heavy ones included, in the day's index.
    rt.block_on(async {
        let http = reqwest::Client::new();
        let index = format!("{tag}-{day}");
        let count = es_count(&es, &index).await;
        assert_eq!(count["count"], 250, "{count}");
        let _ = http.delete(format!("{es}/{index}")).send().await;
    });
    drop(server);
}

#[test]
fn steam_recent_games_walks_ids_from_the_redis_cursor_once() {
    let _serial = common::serial();
    let broker = env_or("SLUICE_TEST_KAFKA", "127.0.0.1:9092");
    let es = env_or("SLUICE_TEST_OPENSEARCH", "http://127.0.0.1:9200");
    let redis_url = env_or("SLUICE_TEST_REDIS_URL", "redis://127.0.0.1:6379");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let fixtures = sluice_fixtures::Fixtures::new(Default::default());
    let server = rt
        .block_on(sluice_fixtures::spawn(fixtures.router(), "127.0.0.1:0"))
        .expect("fixture server");
    let key = sluice::checkpoints::redis_key("steam_recent_games");
    let redis_cmd = |args: &[&str]| -> Option<String> {
        rt.block_on(async {
            let mut c = redis::Client::open(redis_url.as_str())
                .expect("redis")
                .get_multiplexed_async_connection()
                .await
                .expect("redis connection");
            let mut cmd = redis::cmd(args[0]);
            for a in &args[1..] {
                cmd.arg(*a);
            }
            cmd.query_async::<Option<String>>(&mut c)
                .await
                .ok()
                .flatten()
        })
    };
    redis_cmd(&["DEL", &key, &format!("{key}:seq")]);
    let tag = format!("rg{}x{}", std::process::id(), rand::random::<u32>());
    let mut home = pipeline_sandbox("steam_recent_games.toml", &broker, &es);
    home.set_env("SLUICE_CONN_REDIS_DEFAULT", &redis_url);
    home.set_env("SLUICE_SECRET_STEAM_API_KEY", "fixture-key-0001");
    let settings = json!({
        "base_url": format!("{}/steam", server.url()), "batch": 20, "rate_limit": "100/s",
        "games_topic": format!("{tag}-games"), "summaries_topic": format!("{tag}-summaries"),
        "index_prefix": tag,
    });
    home.ok(&[
        "variables",
        "set",
        "steam_recent_games",
        &settings.to_string(),
    ]);

    let (_scheduler, _runs) = two_successful_runs(&home, "steam_recent_games");
    let successes = home
        .runs("steam_recent_games")
        .expect("runs")
        .iter()
        .filter(|r| r["state"] == "success")
        .count() as u64;

    // The cursor moved one batch per successful run, and each user was fetched once.
    let start = 76561197960265728u64;
    let cursor = redis_cmd(&["HGET", &key, "last_steam_id"]).expect("cursor in Redis");
    assert_eq!(cursor, (start + 20 * successes).to_string());
    let games = read_topic(&broker, &format!("{tag}-games"));
    let users: BTreeSet<u64> = games
        .iter()
        .map(|(_, k, _)| k.parse::<u64>().expect("steam id"))
        .collect();
    let expected: BTreeSet<u64> = (start + 1..=start + 20 * successes).collect();
    assert_eq!(
        users, expected,
        "every id of every batch, none twice across runs"
    );
    let per_user_game: BTreeSet<(String, String)> = games
        .iter()
        .map(|(_, k, v)| (k.clone(), v["appid"].to_string()))
        .collect();
    assert_eq!(
        per_user_game.len(),
        games.len(),
        "no (user, game) record twice"
    );
    let summaries = read_topic(&broker, &format!("{tag}-summaries"));
    assert!(!summaries.is_empty() && summaries.len() as u64 <= 20 * successes);
    assert!(
        summaries
            .iter()
            .any(|(_, _, v)| v["communityvisibilitystate"] == 1),
        "private profiles are records too"
    );
    rt.block_on(async {
        let http = reqwest::Client::new();
        let index = format!("{tag}-player-summaries");
        let count = es_count(&es, &index).await;
        assert_eq!(count["count"], summaries.len(), "{count}");
        let _ = http.delete(format!("{es}/{index}")).send().await;
        let _ = http.delete(format!("{es}/{tag}-recent-games")).send().await;
    });
    redis_cmd(&["DEL", &key, &format!("{key}:seq")]);
    drop(server);
}

#[test]
fn steam_news_daily_maps_over_games_and_sends_each_item_once() {
    let _serial = common::serial();
    let broker = env_or("SLUICE_TEST_KAFKA", "127.0.0.1:9092");
    let es = env_or("SLUICE_TEST_OPENSEARCH", "http://127.0.0.1:9200");
    let redis_url = env_or("SLUICE_TEST_REDIS_URL", "redis://127.0.0.1:6379");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let fixtures = sluice_fixtures::Fixtures::new(Default::default());
    let server = rt
        .block_on(sluice_fixtures::spawn(fixtures.router(), "127.0.0.1:0"))
        .expect("fixture server");
    let key = sluice::checkpoints::redis_key("steam_news_daily");
    let redis_del = || {
        rt.block_on(async {
            let mut c = redis::Client::open(redis_url.as_str())
                .expect("redis")
                .get_multiplexed_async_connection()
                .await
                .expect("redis connection");
            let _: () = redis::cmd("DEL")
                .arg(&key)
                .arg(format!("{key}:seq"))
                .query_async(&mut c)
                .await
                .expect("DEL");
        })
    };
    redis_del();
    let tag = format!("nd{}x{}", std::process::id(), rand::random::<u32>());
    let mut home = pipeline_sandbox("steam_news_daily.toml", &broker, &es);
    home.set_env("SLUICE_CONN_REDIS_DEFAULT", &redis_url);
    home.set_env("SLUICE_SECRET_STEAM_API_KEY", "fixture-key-0001");
    let settings = json!({
        "base_url": format!("{}/steam", server.url()), "rate_limit": "50/s",
        "topic": tag, "index": tag,
        "games": {"Counter-Strike 2": 730, "Dota 2": 570, "PUBG: BATTLEGROUNDS": 578080, "Apex Legends": 1172470},
    });
    home.ok(&[
        "variables",
        "set",
        "steam_news_daily",
        &settings.to_string(),
    ]);

    // Two runs on throwaway stores: the checkpoint in Redis carries over.
    for round in 1..=2 {
        let out = home
            .ok(&["dags", "test", "steam_news_daily", "--json"])
            .json();
        assert_eq!(out["state"], "success", "round {round}: {out}");
        let mapped = out["task_instances"]
            .as_array()
            .expect("tis")
            .iter()
            .filter(|t| t["task_id"] == "news")
            .count();
        assert_eq!(mapped, 4, "one mapped instance per game: {out}");
    }
    let messages = read_topic(&broker, &tag);
    let gids: BTreeSet<&str> = messages.iter().map(|(_, k, _)| k.as_str()).collect();
    assert!(!messages.is_empty());
    assert_eq!(gids.len(), messages.len(), "no news item sent twice");
    let games: BTreeSet<i64> = messages
        .iter()
        .filter_map(|(_, _, v)| v["appid"].as_i64())
        .collect();
    assert_eq!(games.len(), 4, "news of every game: {games:?}");
    rt.block_on(async {
        let http = reqwest::Client::new();
        let count = es_count(&es, &tag).await;
        assert_eq!(count["count"], messages.len(), "{count}");
        let _ = http.delete(format!("{es}/{tag}")).send().await;
    });
    redis_del();
    drop(server);
}

#[test]
fn news_crawl_sends_each_article_once_and_keeps_the_ranking_in_postgres() {
    let _serial = common::serial();
    let broker = env_or("SLUICE_TEST_KAFKA", "127.0.0.1:9092");
    let es = env_or("SLUICE_TEST_OPENSEARCH", "http://127.0.0.1:9200");
    let pg = pg_admin_url();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let fixtures = sluice_fixtures::Fixtures::new(Default::default());
    let server = rt
        .block_on(sluice_fixtures::spawn(fixtures.router(), "127.0.0.1:0"))
        .expect("fixture server");
    let tag = format!("nc{}x{}", std::process::id(), rand::random::<u32>());
    let mut home = pipeline_sandbox("news_crawl.toml", &broker, &es);
    home.set_env("SLUICE_CONN_PG_DEFAULT", &pg);
    let settings = json!({
        "base_url": format!("{}/news", server.url()), "sites": 3,
        "topic": tag, "index": tag, "table": tag,
    });
    home.ok(&["variables", "set", "news_crawl", &settings.to_string()]);

    let (_scheduler, _runs) = two_successful_runs(&home, "news_crawl");

    let messages = read_topic(&broker, &tag);
    let urls: BTreeSet<&str> = messages.iter().map(|(_, k, _)| k.as_str()).collect();
    assert!(messages.len() > 50, "{} articles", messages.len());
    assert_eq!(
        urls.len(),
        messages.len(),
        "no article sent twice across runs"
    );
    assert!(messages
        .iter()
        .all(|(_, _, v)| v["title"].as_str().is_some_and(|t| !t.is_empty())));
    assert_eq!(
        fixtures.news.stats.disallowed_requests(),
        0,
        "robots.txt-disallowed pages are never requested"
    );
    let (rows, categories): (i64, i64) = rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&pg).await.expect("pg");
        let r = sqlx::query_as(&format!(
            "SELECT COUNT(*), COUNT(DISTINCT category) FROM \"{tag}\""
        ))
        .fetch_one(&mut c)
        .await
        .expect("count");
        // The ranking query of the DAG's header works on what was written.
        let top: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT category, views FROM (SELECT *, row_number() OVER \
             (PARTITION BY category ORDER BY views DESC) AS rank FROM \"{tag}\") t \
             WHERE rank = 1 ORDER BY category"
        ))
        .fetch_all(&mut c)
        .await
        .expect("ranking");
        assert_eq!(top.len(), 7, "{top:?}");
        sqlx::query(&format!("DROP TABLE \"{tag}\""))
            .execute(&mut c)
            .await
            .expect("drop");
        r
    });
    assert_eq!(rows as usize, urls.len());
    assert_eq!(categories, 7);
    rt.block_on(async {
        let http = reqwest::Client::new();
        let count = es_count(&es, &tag).await;
        assert_eq!(count["count"], urls.len(), "{count}");
        let _ = http.delete(format!("{es}/{tag}")).send().await;
    });
    drop(server);
}

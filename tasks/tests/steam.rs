//! The `steam` kind against a fixture server that serves Steam Web API shaped JSON on
//! 127.0.0.1 (the same paths and payloads as api.steampowered.com).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use sluice_tasks::{Registry, TaskContext, TaskError, TryLog};

const KEY: &str = "0123456789ABCDEF0123456789ABCDEF";
const PUBLIC: &str = "76561197960287930";
const PRIVATE: &str = "76561197960287931";
const IDLE: &str = "76561197960287932";

type Q = Query<HashMap<String, String>>;

#[derive(Default)]
struct Fixture {
    /// Requests answered with 429 before serving normally.
    throttle_first: AtomicUsize,
    calls: AtomicUsize,
    summary_batches: Mutex<Vec<usize>>,
    /// Answer everything with 500, echoing the request URI (a worst-case server).
    broken: bool,
}

fn forbidden() -> Response {
    // What Steam answers for a missing or wrong key.
    (
        StatusCode::FORBIDDEN,
        [("content-type", "text/html")],
        "<html><head><title>Forbidden</title></head><body><h1>Forbidden</h1>Access is denied. Retrying will not help. Please verify your <pre>key=</pre> parameter.</body></html>",
    )
        .into_response()
}

fn gate(f: &Fixture, q: &HashMap<String, String>, needs_key: bool) -> Option<Response> {
    f.calls.fetch_add(1, Ordering::SeqCst);
    if f.throttle_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return Some(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                "Too Many Requests",
            )
                .into_response(),
        );
    }
    if needs_key && q.get("key").map(String::as_str) != Some(KEY) {
        return Some(forbidden());
    }
    None
}

async fn current_players(State(f): State<Arc<Fixture>>, Query(q): Q) -> Response {
    if let Some(r) = gate(&f, &q, false) {
        return r;
    }
    let counts: HashMap<&str, u64> =
        [("578080", 712_345), ("570", 654_321), ("730", 1_234_567)].into();
    match q.get("appid").and_then(|a| counts.get(a.as_str())) {
        Some(n) => Json(json!({"response": {"player_count": n, "result": 1}})).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"response": {"result": 42}})),
        )
            .into_response(),
    }
}

async fn recently_played(State(f): State<Arc<Fixture>>, Query(q): Q) -> Response {
    if let Some(r) = gate(&f, &q, true) {
        return r;
    }
    match q.get("steamid").map(String::as_str) {
        Some(PUBLIC) => Json(json!({"response": {"total_count": 2, "games": [
            {"appid": 570, "name": "Dota 2", "playtime_2weeks": 1260, "playtime_forever": 104_320,
             "img_icon_url": "0bbb630d63262dd66d2fdd0f7d37e8661a410075",
             "playtime_windows_forever": 104_000, "playtime_mac_forever": 0, "playtime_linux_forever": 320, "playtime_deck_forever": 0},
            {"appid": 730, "name": "Counter-Strike 2", "playtime_2weeks": 95, "playtime_forever": 5020,
             "img_icon_url": "8dbc71957312bbd3baea65848b545be9eae2a355",
             "playtime_windows_forever": 5020, "playtime_mac_forever": 0, "playtime_linux_forever": 0, "playtime_deck_forever": 0}
        ]}}))
        .into_response(),
        Some(IDLE) => Json(json!({"response": {"total_count": 0}})).into_response(),
        // Private profiles answer an empty response object.
        _ => Json(json!({"response": {}})).into_response(),
    }
}

async fn player_summaries(State(f): State<Arc<Fixture>>, Query(q): Q) -> Response {
    if let Some(r) = gate(&f, &q, true) {
        return r;
    }
    let ids: Vec<String> = q
        .get("steamids")
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    f.summary_batches.lock().expect("lock").push(ids.len());
    let players: Vec<Value> = ids
        .iter()
        .map(|id| {
            let public = id.ends_with('0') || id.ends_with('2') || id.ends_with('4') || id.ends_with('6') || id.ends_with('8');
            let mut p = json!({
                "steamid": id,
                "communityvisibilitystate": if public { 3 } else { 1 },
                "profilestate": 1,
                "personaname": format!("player-{}", &id[id.len() - 4..]),
                "profileurl": format!("https://steamcommunity.com/profiles/{id}/"),
                "avatar": "https://avatars.steamstatic.com/fef49e7fa7e1997310d705b2a6158ff8dc1cdfeb.jpg",
                "avatarhash": "fef49e7fa7e1997310d705b2a6158ff8dc1cdfeb",
                "lastlogoff": 1_722_470_400u64,
                "personastate": 0,
            });
            if public {
                p["timecreated"] = json!(1_063_407_589u64);
                p["loccountrycode"] = json!("KR");
                p["primaryclanid"] = json!("103582791429521408");
            }
            p
        })
        .collect();
    Json(json!({"response": {"players": players}})).into_response()
}

async fn app_news(State(f): State<Arc<Fixture>>, Query(q): Q) -> Response {
    if let Some(r) = gate(&f, &q, true) {
        return r;
    }
    let appid: u64 = q.get("appid").and_then(|a| a.parse().ok()).unwrap_or(0);
    let count: usize = q.get("count").and_then(|a| a.parse().ok()).unwrap_or(20);
    let items: Vec<Value> = (0..count.min(3))
        .map(|i| {
            json!({
                "gid": format!("{}", 5_124_000_000_000_000_000u64 + i as u64),
                "title": format!("Patch 7.3{i} is live"),
                "url": format!("https://steamstore-a.akamaihd.net/news/externalpost/steam_community_announcements/{i}"),
                "is_external_url": true,
                "author": "Valve",
                "contents": "Fixed a bug, \"quoted\" and <b>bold</b>, 한국어 too.",
                "feedlabel": "Community Announcements",
                "date": 1_722_470_400 + i as i64 * 3600,
                "feedname": "steam_community_announcements",
                "feed_type": 1,
                "appid": appid,
                "tags": ["patchnotes"]
            })
        })
        .collect();
    Json(json!({"appnews": {"appid": appid, "newsitems": items, "count": 1234}})).into_response()
}

async fn broken(State(_f): State<Arc<Fixture>>, uri: axum::http::Uri) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("internal error serving {uri}"),
    )
        .into_response()
}

async fn serve(f: Fixture) -> (SocketAddr, Arc<Fixture>) {
    let f = Arc::new(f);
    let router = if f.broken {
        Router::new().fallback(broken)
    } else {
        Router::new()
            .route(
                "/ISteamUserStats/GetNumberOfCurrentPlayers/v1",
                get(current_players),
            )
            .route(
                "/IPlayerService/GetRecentlyPlayedGames/v1",
                get(recently_played),
            )
            .route("/ISteamUser/GetPlayerSummaries/v2", get(player_summaries))
            .route("/ISteamNews/GetNewsForApp/v2", get(app_news))
    }
    .with_state(f.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    (addr, f)
}

async fn run_with(ctx: &TaskContext, addr: SocketAddr, a: Value) -> Result<Value, TaskError> {
    let mut args: Map<String, Value> = a.as_object().expect("object").clone();
    args.insert("base_url".into(), json!(format!("http://{addr}")));
    Registry::builtin()
        .get("steam")
        .expect("steam registered")
        .run(ctx, args)
        .await
}

async fn run(addr: SocketAddr, a: Value) -> Result<Value, TaskError> {
    run_with(&TaskContext::detached("steam", "t"), addr, a).await
}

#[tokio::test]
async fn current_players_for_a_games_table() {
    let (addr, _) = serve(Fixture::default()).await;
    let ctx = TaskContext::detached("steam", "t");
    let out = run_with(
        &ctx,
        addr,
        json!({"endpoint": "current_players", "games": {"pubg": 578080, "dota2": "570", "cs2": 730}}),
    )
    .await
    .expect("succeeds");
    let recs = out.as_array().expect("records");
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[0]["game"], "pubg");
    assert_eq!(recs[0]["appid"], 578080);
    assert_eq!(recs[0]["player_count"], 712_345);
    assert_eq!(recs[1]["game"], "dota2");
    assert_eq!(recs[1]["appid"], 570);
    let fetched = recs[2]["fetched_at"].as_str().expect("fetched_at");
    chrono::DateTime::parse_from_rfc3339(fetched).expect("RFC 3339");
    assert_eq!(ctx.metrics.snapshot().records_in, 3);

    // One mapped item: `game` names it.
    let out = run(
        addr,
        json!({"endpoint": "current_players", "appid": 730, "game": "cs2"}),
    )
    .await
    .expect("ok");
    assert_eq!(out[0]["game"], "cs2");
    assert_eq!(out[0]["player_count"], 1_234_567);
}

#[tokio::test]
async fn an_unknown_app_id_fails_naming_it() {
    let (addr, _) = serve(Fixture::default()).await;
    let err = run(
        addr,
        json!({"endpoint": "current_players", "appids": [570, 999999]}),
    )
    .await
    .expect_err("unknown");
    assert!(
        matches!(&err, TaskError::Fatal(m) if m.contains("appid=999999") && m.contains("404")),
        "{err:?}"
    );
}

#[tokio::test]
async fn recently_played_per_user_with_private_profiles_as_records() {
    let (addr, _) = serve(Fixture::default()).await;
    let out = run(
        addr,
        json!({"endpoint": "recently_played", "api_key": KEY, "steamids": [PUBLIC, PRIVATE, IDLE]}),
    )
    .await
    .expect("succeeds");
    let recs = out.as_array().expect("records");
    assert_eq!(recs.len(), 4, "{out:#}");
    assert_eq!(recs[0]["steamid"], PUBLIC);
    assert_eq!(recs[0]["name"], "Dota 2");
    assert_eq!(recs[0]["appid"], 570);
    assert_eq!(recs[0]["playtime_2weeks"], 1260);
    assert_eq!(recs[0]["playtime_forever"], 104_320);
    assert!(
        recs[0].get("img_icon_url").is_none(),
        "normalised fields only"
    );
    assert_eq!(recs[1]["name"], "Counter-Strike 2");
    assert_eq!(recs[2]["steamid"], PRIVATE);
    assert_eq!(recs[2]["private"], true);
    assert_eq!(recs[2]["games"], 0);
    assert_eq!(recs[3]["steamid"], IDLE);
    assert_eq!(recs[3]["private"], false);
    assert_eq!(recs[3]["games"], 0);
    // The checkpoint a DAG proposes: the largest steam id processed.
    let max = recs
        .iter()
        .filter_map(|r| r["steamid"].as_str())
        .max()
        .expect("ids");
    assert_eq!(max, IDLE);
}

#[tokio::test]
async fn player_summaries_are_batched_100_ids_per_call() {
    let (addr, f) = serve(Fixture::default()).await;
    let base: u64 = 76_561_197_960_265_728;
    let ids: Vec<String> = (0..250u64).map(|i| (base + i).to_string()).collect();
    let out = run(
        addr,
        json!({"endpoint": "player_summaries", "api_key": KEY, "steamids": ids}),
    )
    .await
    .expect("succeeds");
    assert_eq!(*f.summary_batches.lock().expect("lock"), vec![100, 100, 50]);
    let recs = out.as_array().expect("records");
    assert_eq!(recs.len(), 250);
    let first = &recs[0];
    assert_eq!(first["steamid"], base.to_string());
    assert_eq!(first["communityvisibilitystate"], 3);
    assert_eq!(first["timecreated"], 1_063_407_589u64);
    assert_eq!(first["loccountrycode"], "KR");
    assert!(first.get("avatar").is_none());
    let private = &recs[1];
    assert_eq!(private["communityvisibilitystate"], 1);
    assert!(private.get("timecreated").is_none() && private.get("loccountrycode").is_none());
    assert_eq!(private["lastlogoff"], 1_722_470_400u64);
}

#[tokio::test]
async fn app_news_dates_are_rfc3339() {
    let (addr, _) = serve(Fixture::default()).await;
    let out = run(
        addr,
        json!({"endpoint": "app_news", "api_key": KEY, "appid": 570, "count": 2}),
    )
    .await
    .expect("succeeds");
    let recs = out.as_array().expect("records");
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["appid"], 570);
    assert_eq!(recs[0]["date"], "2024-08-01T00:00:00Z");
    assert_eq!(recs[1]["date"], "2024-08-01T01:00:00Z");
    assert_eq!(recs[0]["author"], "Valve");
    assert_eq!(recs[0]["feedlabel"], "Community Announcements");
    assert!(recs[0]["contents"]
        .as_str()
        .expect("contents")
        .contains("한국어"));
    assert_eq!(recs[0]["gid"], "5124000000000000000");
}

#[tokio::test]
async fn a_429_is_retried_after_retry_after() {
    let (addr, f) = serve(Fixture {
        throttle_first: AtomicUsize::new(1),
        ..Fixture::default()
    })
    .await;
    let started = Instant::now();
    let out = run(addr, json!({"endpoint": "current_players", "appid": 570}))
        .await
        .expect("succeeds");
    assert_eq!(out[0]["player_count"], 654_321);
    assert_eq!(f.calls.load(Ordering::SeqCst), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );

    let (addr, _) = serve(Fixture {
        throttle_first: AtomicUsize::new(10),
        ..Fixture::default()
    })
    .await;
    let err = run(
        addr,
        json!({"endpoint": "current_players", "appid": 570, "max_attempts": 2}),
    )
    .await
    .expect_err("still throttled");
    assert!(
        err.to_string().contains("429") && err.to_string().contains("after 2 attempts"),
        "{err}"
    );
}

#[tokio::test]
async fn the_api_key_never_appears_in_logs_or_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let log_path = dir.path().join("try.log");
    let ctx = TaskContext {
        log: TryLog::open(&log_path).expect("log"),
        ..TaskContext::detached("steam", "t")
    };
    // A server that fails and echoes the request URI, key included, in its body.
    let (addr, _) = serve(Fixture {
        broken: true,
        ..Fixture::default()
    })
    .await;
    let err = run_with(
        &ctx,
        addr,
        json!({"endpoint": "recently_played", "api_key": KEY, "steamid": PUBLIC, "max_attempts": 2, "retry_delay": "10ms"}),
    )
    .await
    .expect_err("500s");
    let msg = err.to_string();
    assert!(msg.contains("500") && msg.contains("key=***"), "{msg}");
    assert!(!msg.contains(KEY), "{msg}");
    let log = std::fs::read_to_string(&log_path).expect("log written");
    assert!(log.contains("key=***"), "{log}");
    assert!(!log.contains(KEY), "{log}");

    // A wrong key: Steam's 403 is fatal (retrying cannot help) and still masked.
    let (addr, _) = serve(Fixture::default()).await;
    let err = run(
        addr,
        json!({"endpoint": "app_news", "api_key": "WRONG-KEY-42", "appid": 570}),
    )
    .await
    .expect_err("403");
    assert!(
        matches!(&err, TaskError::Fatal(m) if m.contains("403") && !m.contains("WRONG-KEY-42")),
        "{err:?}"
    );
}

#[tokio::test]
async fn arguments_are_checked() {
    let (addr, _) = serve(Fixture::default()).await;
    let err = run(
        addr,
        json!({"endpoint": "recently_played", "steamid": PUBLIC}),
    )
    .await
    .expect_err("no key");
    assert!(
        matches!(&err, TaskError::Fatal(m) if m.contains("api_key")),
        "{err:?}"
    );
    let err = run(addr, json!({"endpoint": "player_count"}))
        .await
        .expect_err("bad endpoint");
    assert!(
        matches!(&err, TaskError::Fatal(m) if m.contains("current_players")),
        "{err:?}"
    );
    let err = run(
        addr,
        json!({"endpoint": "player_summaries", "api_key": KEY, "steamids": ["7656x"]}),
    )
    .await
    .expect_err("bad id");
    assert!(
        matches!(&err, TaskError::Fatal(m) if m.contains("7656x")),
        "{err:?}"
    );
    let err = run(addr, json!({"endpoint": "current_players"}))
        .await
        .expect_err("no app");
    assert!(
        matches!(&err, TaskError::Fatal(m) if m.contains("appid")),
        "{err:?}"
    );
}

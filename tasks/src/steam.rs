//! `steam`: the Steam Web API, on the `http` kind's request machinery (retries on 429
//! and 5xx honouring Retry-After, a process-wide rate limit per host).
//!
//! Keys: `endpoint` (current_players | recently_played | player_summaries | app_news),
//! `api_key` (all but current_players), `base_url`, `appid` / `appids` / `games`
//! (+ `game`), `steamid` / `steamids`, `count`, `maxlength`, `rate_limit` ("1/s"),
//! `rate_burst` (10), `timeout`, `max_attempts`, `retry_delay`, `max_retry_wait`.
//! Returns normalised records; the key never appears in logs or errors.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use sluice_core::KindKeys;
use url::Url;

use crate::http::{limiter_from_args, opt_u64, set_query, Fetcher, Req, RetryPolicy};
use crate::{opt_str, short, TaskContext, TaskError, TaskKind};

const DEFAULT_BASE: &str = "https://api.steampowered.com";
/// 1 call/s sustained is 86,400 a day: under Steam's 100,000 calls/day.
const DEFAULT_RATE: &str = "1/s";
const DEFAULT_BURST: u64 = 10;
/// GetPlayerSummaries takes at most 100 ids per call.
const SUMMARY_BATCH: usize = 100;

pub struct Steam;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Endpoint {
    CurrentPlayers,
    RecentlyPlayed,
    PlayerSummaries,
    AppNews,
}

impl Endpoint {
    fn parse(s: &str) -> Result<Endpoint, TaskError> {
        Ok(match s {
            "current_players" => Endpoint::CurrentPlayers,
            "recently_played" => Endpoint::RecentlyPlayed,
            "player_summaries" => Endpoint::PlayerSummaries,
            "app_news" => Endpoint::AppNews,
            other => {
                return Err(TaskError::Fatal(format!(
                    "`endpoint` {other:?} is not one of current_players, recently_played, player_summaries, app_news"
                )))
            }
        })
    }

    fn path(self) -> &'static str {
        match self {
            Endpoint::CurrentPlayers => "ISteamUserStats/GetNumberOfCurrentPlayers/v1",
            Endpoint::RecentlyPlayed => "IPlayerService/GetRecentlyPlayedGames/v1",
            Endpoint::PlayerSummaries => "ISteamUser/GetPlayerSummaries/v2",
            Endpoint::AppNews => "ISteamNews/GetNewsForApp/v2",
        }
    }
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An app id from a number or a numeric string.
fn appid_of(key: &str, v: &Value) -> Result<u64, TaskError> {
    match v {
        Value::Number(n) if n.as_u64().is_some() => Ok(n.as_u64().unwrap_or_default()),
        Value::String(s) if s.trim().parse::<u64>().is_ok() => {
            Ok(s.trim().parse().unwrap_or_default())
        }
        other => Err(TaskError::Fatal(format!(
            "`{key}`: an app id must be a number such as 570, got {}",
            short(other)
        ))),
    }
}

/// A 64-bit Steam id (17 digits) as a string: ids exceed what JSON numbers keep exactly
/// in many consumers, and Steam itself returns them as strings.
fn steamid_of(key: &str, v: &Value) -> Result<String, TaskError> {
    let s = match v {
        Value::Number(n) if n.as_u64().is_some() => n.to_string(),
        Value::String(s) => s.trim().to_string(),
        other => {
            return Err(TaskError::Fatal(format!(
                "`{key}`: a Steam id must be a 64-bit number such as 76561197960287930, got {}",
                short(other)
            )))
        }
    };
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TaskError::Fatal(format!(
            "`{key}`: {s:?} is not a Steam id (digits only, e.g. 76561197960287930)"
        )));
    }
    Ok(s)
}

/// `(game name, appid)` targets from `games`, `appids`, `appid` (+ `game`).
fn app_targets(args: &Map<String, Value>) -> Result<Vec<(String, u64)>, TaskError> {
    let mut out = Vec::new();
    match args.get("games") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (name, id) in m {
                out.push((name.clone(), appid_of(&format!("games.{name}"), id)?));
            }
        }
        Some(other) => {
            return Err(TaskError::Fatal(format!(
                "`games` must be a table of game name to app id (e.g. {{ dota2 = 570 }}), got {}",
                short(other)
            )))
        }
    }
    match args.get("appids") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for id in a {
                let id = appid_of("appids", id)?;
                out.push((id.to_string(), id));
            }
        }
        Some(other) => {
            return Err(TaskError::Fatal(format!(
                "`appids` must be a list of app ids, got {}",
                short(other)
            )))
        }
    }
    if let Some(v) = args.get("appid").filter(|v| !v.is_null()) {
        let id = appid_of("appid", v)?;
        let name = opt_str(args, "game")?
            .map(str::to_string)
            .unwrap_or_else(|| id.to_string());
        out.push((name, id));
    }
    if out.is_empty() {
        return Err(TaskError::Fatal(
            "this endpoint needs `appid`, `appids` (list) or `games` (table of name to app id)"
                .into(),
        ));
    }
    Ok(out)
}

fn steam_ids(args: &Map<String, Value>) -> Result<Vec<String>, TaskError> {
    let mut out = Vec::new();
    match args.get("steamids") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for v in a {
                out.push(steamid_of("steamids", v)?);
            }
        }
        // A comma-separated string, as Steam itself takes them.
        Some(Value::String(s)) => {
            for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                out.push(steamid_of("steamids", &Value::String(part.into()))?);
            }
        }
        Some(other) => {
            return Err(TaskError::Fatal(format!(
                "`steamids` must be a list of Steam ids, got {}",
                short(other)
            )))
        }
    }
    if let Some(v) = args.get("steamid").filter(|v| !v.is_null()) {
        out.push(steamid_of("steamid", v)?);
    }
    if out.is_empty() {
        return Err(TaskError::Fatal(
            "this endpoint needs `steamid` or `steamids` (list)".into(),
        ));
    }
    Ok(out)
}

/// `obj[key]` as a u64 whether Steam sent a number or a numeric string.
fn num(obj: &Value, key: &str) -> Value {
    match obj.get(key) {
        Some(Value::Number(n)) => Value::Number(n.clone()),
        Some(Value::String(s)) => s
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(s.clone())),
        _ => Value::Null,
    }
}

fn text(obj: &Value, key: &str) -> Value {
    match obj.get(key) {
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Number(n)) => Value::String(n.to_string()),
        _ => Value::Null,
    }
}

fn shape_error(what: &str, body: &Value) -> TaskError {
    TaskError::Failed(format!(
        "{what}: unexpected response shape from Steam: {}",
        short(body)
    ))
}

#[async_trait::async_trait]
impl TaskKind for Steam {
    fn name(&self) -> &'static str {
        "steam"
    }

    fn keys(&self) -> KindKeys {
        KindKeys {
            allowed: &[
                "endpoint",
                "api_key",
                "base_url",
                "appid",
                "appids",
                "games",
                "game",
                "steamid",
                "steamids",
                "count",
                "maxlength",
                "rate_limit",
                "rate_burst",
                "timeout",
                "max_attempts",
                "retry_delay",
                "max_retry_wait",
            ],
            required: &["endpoint"],
        }
    }

    async fn run(&self, ctx: &TaskContext, args: Map<String, Value>) -> Result<Value, TaskError> {
        let endpoint = Endpoint::parse(
            opt_str(&args, "endpoint")?
                .ok_or_else(|| TaskError::Fatal("`endpoint` is required".into()))?,
        )?;
        let api_key = opt_str(&args, "api_key")?
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_string);
        if api_key.is_none() && endpoint != Endpoint::CurrentPlayers {
            return Err(TaskError::Fatal(
                "`api_key` is required for this endpoint: set api_key = \"{{ secrets.STEAM_API_KEY }}\" and define the secret (SLUICE_SECRET_STEAM_API_KEY)".into(),
            ));
        }
        let base_text = opt_str(&args, "base_url")?.unwrap_or(DEFAULT_BASE);
        let base = Url::parse(&format!("{}/", base_text.trim_end_matches('/')))
            .map_err(|e| TaskError::Fatal(format!("`base_url` {base_text:?} is not a URL: {e}")))?;
        let endpoint_url = base
            .join(endpoint.path())
            .map_err(|e| TaskError::Fatal(format!("`base_url` {base_text:?}: {e}")))?;
        let rate_key = format!(
            "host:{}:{}",
            base.host_str().unwrap_or(""),
            base.port_or_known_default().unwrap_or(0)
        );
        let mut rate_args = args.clone();
        if !rate_args.contains_key("rate_burst") && !rate_args.contains_key("rate_limit") {
            rate_args.insert("rate_burst".into(), DEFAULT_BURST.into());
        }
        let fetcher = Fetcher {
            ctx,
            policy: RetryPolicy::from_args(&args)?,
            limiter: limiter_from_args(&rate_args, &rate_key, Some(DEFAULT_RATE))?,
            secrets: api_key.iter().cloned().collect(),
        };
        let count = opt_u64(&args, "count")?;
        let call = |params: Vec<(&str, String)>| {
            let mut url = endpoint_url.clone();
            if let Some(k) = &api_key {
                set_query(&mut url, "key", k);
            }
            for (k, v) in params {
                set_query(&mut url, k, &v);
            }
            url
        };

        let mut records = Vec::new();
        match endpoint {
            Endpoint::CurrentPlayers => {
                for (game, appid) in app_targets(&args)? {
                    let body = fetcher
                        .get_json(&Req::get(call(vec![("appid", appid.to_string())])))
                        .await?;
                    let resp = body.get("response").ok_or_else(|| {
                        shape_error(&format!("current players of {game} ({appid})"), &body)
                    })?;
                    let result = resp.get("result").and_then(Value::as_i64).unwrap_or(1);
                    let players = resp.get("player_count").and_then(Value::as_u64);
                    let Some(players) = players.filter(|_| result == 1) else {
                        return Err(TaskError::Fatal(format!(
                            "current players of {game} (appid {appid}): Steam returned result {result} without a player count (unknown app id?)"
                        )));
                    };
                    records.push(json!({
                        "game": game,
                        "appid": appid,
                        "player_count": players,
                        "fetched_at": now_rfc3339(),
                    }));
                }
            }
            Endpoint::RecentlyPlayed => {
                for steamid in steam_ids(&args)? {
                    let mut params = vec![("steamid", steamid.clone())];
                    if let Some(c) = count {
                        params.push(("count", c.to_string()));
                    }
                    let body = fetcher.get_json(&Req::get(call(params))).await?;
                    let resp = body
                        .get("response")
                        .filter(|r| r.is_object())
                        .ok_or_else(|| {
                            shape_error(&format!("recently played games of {steamid}"), &body)
                        })?;
                    let fetched_at = now_rfc3339();
                    match resp.get("games").and_then(Value::as_array) {
                        Some(games) if !games.is_empty() => {
                            for g in games {
                                records.push(json!({
                                    "steamid": steamid,
                                    "appid": num(g, "appid"),
                                    "name": text(g, "name"),
                                    "playtime_2weeks": num(g, "playtime_2weeks"),
                                    "playtime_forever": num(g, "playtime_forever"),
                                    "fetched_at": fetched_at,
                                }));
                            }
                        }
                        _ => {
                            // A private profile answers `{"response": {}}`; a public one
                            // with nothing played lately still says `total_count: 0`.
                            let private = resp.get("total_count").is_none();
                            ctx.log.info(&format!(
                                "{steamid}: no recently played games{}",
                                if private { " (private profile)" } else { "" }
                            ));
                            records.push(json!({
                                "steamid": steamid,
                                "private": private,
                                "games": 0,
                                "fetched_at": fetched_at,
                            }));
                        }
                    }
                }
            }
            Endpoint::PlayerSummaries => {
                let ids = steam_ids(&args)?;
                for batch in ids.chunks(SUMMARY_BATCH) {
                    let body = fetcher
                        .get_json(&Req::get(call(vec![("steamids", batch.join(","))])))
                        .await?;
                    let players = body
                        .pointer("/response/players")
                        .and_then(Value::as_array)
                        .ok_or_else(|| shape_error("player summaries", &body))?;
                    if players.len() < batch.len() {
                        ctx.log.warn(&format!(
                            "Steam returned {} of {} requested player summaries (unknown or deleted accounts are left out)",
                            players.len(),
                            batch.len()
                        ));
                    }
                    for p in players {
                        let mut r = Map::new();
                        r.insert("steamid".into(), text(p, "steamid"));
                        r.insert("personaname".into(), text(p, "personaname"));
                        r.insert("profileurl".into(), text(p, "profileurl"));
                        r.insert(
                            "communityvisibilitystate".into(),
                            num(p, "communityvisibilitystate"),
                        );
                        r.insert("lastlogoff".into(), num(p, "lastlogoff"));
                        // Present only for public profiles / when the user set them.
                        if p.get("timecreated").is_some() {
                            r.insert("timecreated".into(), num(p, "timecreated"));
                        }
                        if p.get("loccountrycode").is_some() {
                            r.insert("loccountrycode".into(), text(p, "loccountrycode"));
                        }
                        records.push(Value::Object(r));
                    }
                }
            }
            Endpoint::AppNews => {
                for (game, appid) in app_targets(&args)? {
                    let mut params = vec![
                        ("appid", appid.to_string()),
                        ("count", count.unwrap_or(10).to_string()),
                    ];
                    if let Some(m) = opt_u64(&args, "maxlength")? {
                        params.push(("maxlength", m.to_string()));
                    }
                    let body = fetcher.get_json(&Req::get(call(params))).await?;
                    let items = body
                        .pointer("/appnews/newsitems")
                        .and_then(Value::as_array)
                        .ok_or_else(|| shape_error(&format!("news of {game} ({appid})"), &body))?;
                    for n in items {
                        let date = n
                            .get("date")
                            .and_then(Value::as_i64)
                            .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0))
                            .map(|d| Value::String(d.to_rfc3339_opts(SecondsFormat::Secs, true)))
                            .unwrap_or(Value::Null);
                        records.push(json!({
                            "appid": appid,
                            "gid": text(n, "gid"),
                            "title": text(n, "title"),
                            "url": text(n, "url"),
                            "author": text(n, "author"),
                            "contents": text(n, "contents"),
                            "date": date,
                            "feedlabel": text(n, "feedlabel"),
                        }));
                    }
                }
            }
        }
        ctx.metrics.read(records.len() as u64, 0);
        ctx.log
            .info(&format!("{}: {} record(s)", endpoint.path(), records.len()));
        Ok(Value::Array(records))
    }
}

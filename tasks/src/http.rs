//! `http`: calls a REST API and returns its JSON, with retries, rate limiting and
//! pagination. The request machinery here ([`Fetcher`]) is shared with `steam`.
//!
//! Keys: `method` (GET), `url` (required), `query` (table), `headers` (table), `json`
//! (body) or `form` (table), `auth` (connection name: its login/password become basic
//! auth), `bearer` (token), `connection` (base URL; `url` may then be a path),
//! `timeout` ("30s"), `max_attempts` (5), `retry_delay` ("1s", doubled per attempt),
//! `max_retry_wait` ("5m": longest Retry-After honoured), `rate_limit` ("10/s",
//! "100/m"), `rate_burst`, `paginate`, `max_pages` (100), `records` (JSONPath).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value};
use serde_json_path::JsonPath;
use sluice_core::KindKeys;
use url::Url;

use crate::{opt_str, short, TaskContext, TaskError, TaskKind};

/// Query parameter names whose values are credentials: masked in every URL we show.
const SECRET_PARAMS: &[&str] = &[
    "key",
    "api_key",
    "apikey",
    "access_token",
    "token",
    "password",
    "secret",
    "client_secret",
    "signature",
    "sig",
    "auth",
];
/// Longest body excerpt put into an error message.
const SNIPPET_CHARS: usize = 200;
/// Backoff between attempts never grows past this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------
// Shared request machinery
// ---------------------------------------------------------------------------------

/// One client per process: connection pools and TLS config are shared by all tries.
pub(crate) fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("the HTTP client builds with static settings")
    })
}

/// Requests per period, with bursts up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RateSpec {
    pub per_sec: f64,
    pub burst: f64,
}

impl RateSpec {
    /// Parses `"10/s"`, `"100/m"`, `"5000/h"`, `"100000/d"`; `burst` defaults to the count.
    pub fn parse(text: &str, burst: Option<u64>) -> Result<RateSpec, String> {
        let (n, unit) = text
            .split_once('/')
            .ok_or_else(|| format!("`rate_limit` {text:?} must look like \"10/s\" or \"100/m\""))?;
        let n: f64 = n
            .trim()
            .parse()
            .ok()
            .filter(|n: &f64| *n > 0.0 && n.is_finite())
            .ok_or_else(|| format!("`rate_limit` {text:?}: {n:?} is not a positive number"))?;
        let secs = match unit.trim() {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3600.0,
            "d" | "day" => 86400.0,
            other => {
                return Err(format!(
                    "`rate_limit` {text:?}: unknown unit {other:?} (use s, m, h or d)"
                ))
            }
        };
        Ok(RateSpec {
            per_sec: n / secs,
            burst: burst.map(|b| b.max(1) as f64).unwrap_or(n.max(1.0)),
        })
    }
}

/// A token bucket shared by every try of this process that talks to the same host.
pub(crate) struct RateLimiter {
    inner: Mutex<Bucket>,
}

struct Bucket {
    spec: RateSpec,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// The process-wide limiter for `key` (a host or connection name). A task that
    /// configures a different rate for the same key updates it: the latest setting wins.
    pub fn shared(key: &str, spec: RateSpec) -> Arc<RateLimiter> {
        static LIMITERS: OnceLock<Mutex<HashMap<String, Arc<RateLimiter>>>> = OnceLock::new();
        let mut map = LIMITERS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let limiter = map
            .entry(key.to_string())
            .or_insert_with(|| {
                Arc::new(RateLimiter {
                    inner: Mutex::new(Bucket {
                        spec,
                        tokens: spec.burst,
                        last: Instant::now(),
                    }),
                })
            })
            .clone();
        {
            let mut b = limiter.inner.lock().unwrap_or_else(|p| p.into_inner());
            if b.spec != spec {
                b.spec = spec;
                b.tokens = b.tokens.min(spec.burst);
            }
        }
        limiter
    }

    /// Waits for a token. Tokens are reserved before sleeping (the count may go
    /// negative), so concurrent callers queue fairly instead of racing.
    pub async fn acquire(&self, ctx: &TaskContext) -> Result<(), TaskError> {
        let wait = {
            let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let elapsed = now.duration_since(b.last).as_secs_f64();
            b.tokens = (b.tokens + elapsed * b.spec.per_sec).min(b.spec.burst);
            b.last = now;
            b.tokens -= 1.0;
            if b.tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-b.tokens / b.spec.per_sec)
            }
        };
        sleep_or_cancel(ctx, wait).await
    }
}

pub(crate) async fn sleep_or_cancel(ctx: &TaskContext, d: Duration) -> Result<(), TaskError> {
    if d.is_zero() {
        return Ok(());
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => Ok(()),
        _ = ctx.cancel.cancelled() => Err(TaskError::Cancelled),
    }
}

/// How hard to try one request.
#[derive(Clone, Debug)]
pub(crate) struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    /// A Retry-After longer than this fails the try instead of blocking a worker.
    pub max_retry_wait: Duration,
    pub timeout: Duration,
}

impl RetryPolicy {
    /// Reads `max_attempts`, `retry_delay`, `max_retry_wait`, `timeout`.
    pub fn from_args(args: &Map<String, Value>) -> Result<RetryPolicy, TaskError> {
        let max_attempts = opt_u64(args, "max_attempts")?.unwrap_or(5);
        if max_attempts == 0 {
            return Err(TaskError::Fatal("`max_attempts` must be at least 1".into()));
        }
        Ok(RetryPolicy {
            max_attempts: max_attempts.min(100) as u32,
            base_delay: opt_duration(args, "retry_delay")?.unwrap_or(Duration::from_secs(1)),
            max_retry_wait: opt_duration(args, "max_retry_wait")?
                .unwrap_or(Duration::from_secs(300)),
            timeout: opt_duration(args, "timeout")?.unwrap_or(Duration::from_secs(30)),
        })
    }

    pub fn backoff(&self, attempt: u32) -> Duration {
        sluice_core::backoff(attempt, self.base_delay, MAX_BACKOFF)
    }
}

/// A request body.
#[derive(Clone, Debug)]
pub(crate) enum Body {
    None,
    Json(Value),
    Form(Vec<(String, String)>),
}

/// One request, re-sendable for retries and pages.
#[derive(Clone, Debug)]
pub(crate) struct Req {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Body,
    pub basic: Option<(String, Option<String>)>,
    pub bearer: Option<String>,
}

impl Req {
    pub fn get(url: Url) -> Req {
        Req {
            method: Method::GET,
            url,
            headers: HeaderMap::new(),
            body: Body::None,
            basic: None,
            bearer: None,
        }
    }
}

/// Sends requests for one try: retries, rate limit, masking of secrets in messages.
pub(crate) struct Fetcher<'a> {
    pub ctx: &'a TaskContext,
    pub policy: RetryPolicy,
    pub limiter: Option<Arc<RateLimiter>>,
    /// Values that must never appear in a log line or error (keys, tokens, passwords).
    pub secrets: Vec<String>,
}

impl Fetcher<'_> {
    /// The URL as shown in logs and errors: credentials in the query and userinfo
    /// replaced with `***`.
    pub fn show(&self, url: &Url) -> String {
        let mut u = url.clone();
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        if u.query().is_some() {
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let secret = SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str());
                    (
                        k.into_owned(),
                        if secret {
                            "***".to_string()
                        } else {
                            v.into_owned()
                        },
                    )
                })
                .collect();
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
        self.mask(u.as_str())
    }

    /// Replaces known secret values in `text`.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if s.len() >= 3 && out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }

    /// Sends `req`, retrying 429, 408 and 5xx (honouring Retry-After) and network
    /// errors up to `max_attempts`. Returns the status and body of a 2xx response.
    pub async fn send(&self, req: &Req) -> Result<(StatusCode, Vec<u8>), TaskError> {
        let shown = self.show(&req.url);
        let what = format!("{} {}", req.method, shown);
        let host_port = format!(
            "{}:{}",
            req.url.host_str().unwrap_or("?"),
            req.url.port_or_known_default().unwrap_or(0)
        );
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if let Some(l) = &self.limiter {
                l.acquire(self.ctx).await?;
            }
            let mut b = client()
                .request(req.method.clone(), req.url.clone())
                .timeout(self.policy.timeout)
                .headers(req.headers.clone());
            if let Some((user, pass)) = &req.basic {
                b = b.basic_auth(user, pass.as_ref());
            }
            if let Some(token) = &req.bearer {
                b = b.bearer_auth(token);
            }
            b = match &req.body {
                Body::None => b,
                Body::Json(v) => b.json(v),
                Body::Form(f) => b.form(f),
            };
            let started = Instant::now();
            let result = tokio::select! {
                r = async {
                    let resp = b.send().await?;
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_retry_after);
                    let body = resp.bytes().await?;
                    Ok::<_, reqwest::Error>((status, retry_after, body.to_vec()))
                } => r,
                _ = self.ctx.cancel.cancelled() => return Err(TaskError::Cancelled),
            };
            let last = attempt >= self.policy.max_attempts;
            let (delay, reason) = match result {
                Ok((status, _, body)) if status.is_success() => {
                    self.ctx.log.info(&format!(
                        "{what} → {} ({} bytes, {} ms)",
                        status.as_u16(),
                        body.len(),
                        started.elapsed().as_millis()
                    ));
                    return Ok((status, body));
                }
                Ok((status, retry_after, body))
                    if status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::REQUEST_TIMEOUT
                        || status.is_server_error() =>
                {
                    let reason = format!("HTTP {status}{}", self.snippet_suffix(&body));
                    if last {
                        return Err(TaskError::Failed(format!(
                            "{what}: {reason} (gave up after {})",
                            attempts(attempt)
                        )));
                    }
                    match retry_after {
                        Some(wait) if wait > self.policy.max_retry_wait => {
                            return Err(TaskError::Failed(format!(
                                "{what}: HTTP {status}: the server asks to wait {} (Retry-After), longer than max_retry_wait = {}",
                                humantime::format_duration(wait),
                                humantime::format_duration(self.policy.max_retry_wait)
                            )))
                        }
                        Some(wait) => (wait, format!("{reason}; Retry-After {}", humantime::format_duration(wait))),
                        None => (self.policy.backoff(attempt), reason),
                    }
                }
                Ok((status, _, body)) => {
                    // Other 4xx: the request itself is wrong (bad key, bad path); retrying
                    // the same request cannot help.
                    return Err(TaskError::Fatal(format!(
                        "{what}: HTTP {status}{}",
                        self.snippet_suffix(&body)
                    )));
                }
                Err(e) => {
                    let reason = self.mask(&describe_reqwest_error(&e, self.policy.timeout));
                    if last {
                        return Err(TaskError::Failed(format!(
                            "cannot reach {host_port} ({what}) after {}: {reason}",
                            attempts(attempt)
                        )));
                    }
                    (
                        self.policy.backoff(attempt),
                        format!("{host_port}: {reason}"),
                    )
                }
            };
            self.ctx.log.warn(&format!(
                "{what}: attempt {attempt}/{} failed ({reason}); retrying in {}",
                self.policy.max_attempts,
                humantime::format_duration(delay)
            ));
            sleep_or_cancel(self.ctx, delay).await?;
        }
    }

    /// Sends `req` and parses the body as JSON; counts the bytes read.
    pub async fn get_json(&self, req: &Req) -> Result<Value, TaskError> {
        let (status, body) = self.send(req).await?;
        self.ctx.metrics.read(0, body.len() as u64);
        serde_json::from_slice(&body).map_err(|e| {
            TaskError::Failed(format!(
                "{} {}: HTTP {}: the response is not valid JSON ({e}): {}",
                req.method,
                self.show(&req.url),
                status.as_u16(),
                self.snippet(&body)
            ))
        })
    }

    fn snippet(&self, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let mut s: String = text.chars().take(SNIPPET_CHARS).collect();
        if text.chars().count() > SNIPPET_CHARS {
            s.push('…');
        }
        format!("{:?}", self.mask(&s))
    }

    fn snippet_suffix(&self, body: &[u8]) -> String {
        if body.iter().all(|b| b.is_ascii_whitespace()) {
            String::new()
        } else {
            format!(": {}", self.snippet(body))
        }
    }
}

fn attempts(n: u32) -> String {
    if n == 1 {
        "1 attempt".into()
    } else {
        format!("{n} attempts")
    }
}

/// A reqwest error as a short reason, without its URL (which may carry secrets).
pub(crate) fn describe_reqwest_error(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timed out after {}", humantime::format_duration(timeout));
    }
    let mut parts = Vec::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        let text = s.to_string();
        if !parts.iter().any(|p: &String| p.contains(&text)) {
            parts.push(text);
        }
        src = s.source();
    }
    let head = if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "error reading the response body"
    } else {
        "request failed"
    };
    match parts.last() {
        Some(root) => format!("{head}: {root}"),
        None => head.to_string(),
    }
}

/// `Retry-After`: delay seconds or an HTTP date.
pub(crate) fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

// ---------------------------------------------------------------------------------
// Argument helpers shared with steam
// ---------------------------------------------------------------------------------

pub(crate) fn opt_u64(args: &Map<String, Value>, key: &str) -> Result<Option<u64>, TaskError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
        Some(Value::String(s)) if s.trim().parse::<u64>().is_ok() => Ok(s.trim().parse().ok()),
        Some(other) => Err(TaskError::Fatal(format!(
            "`{key}` must be a non-negative integer, got {}",
            short(other)
        ))),
    }
}

pub(crate) fn opt_duration(
    args: &Map<String, Value>,
    key: &str,
) -> Result<Option<Duration>, TaskError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f >= 0.0) => {
            Ok(Some(Duration::from_secs_f64(n.as_f64().unwrap_or(0.0))))
        }
        Some(Value::String(s)) => humantime::parse_duration(s.trim()).map(Some).map_err(|e| {
            TaskError::Fatal(format!(
                "`{key}` = {s:?} is not a duration like \"30s\" or \"2m\": {e}"
            ))
        }),
        Some(other) => Err(TaskError::Fatal(format!(
            "`{key}` must be a duration like \"30s\", got {}",
            short(other)
        ))),
    }
}

/// A JSON scalar as a query/form value.
fn scalar_string(key: &str, v: &Value) -> Result<String, TaskError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(TaskError::Fatal(format!(
            "`{key}` values must be strings, numbers or booleans, got {}",
            short(other)
        ))),
    }
}

fn opt_table<'a>(
    args: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>, TaskError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(TaskError::Fatal(format!(
            "`{key}` must be a table, got {}",
            short(other)
        ))),
    }
}

/// `(key, value)` pairs of a table; arrays become repeated parameters.
fn pairs(key: &str, table: &Map<String, Value>) -> Result<Vec<(String, String)>, TaskError> {
    let mut out = Vec::new();
    for (k, v) in table {
        match v {
            Value::Null => {}
            Value::Array(items) => {
                for item in items {
                    out.push((k.clone(), scalar_string(key, item)?));
                }
            }
            other => out.push((k.clone(), scalar_string(key, other)?)),
        }
    }
    Ok(out)
}

/// Sets `name=value` in the URL's query, replacing an existing value.
pub(crate) fn set_query(url: &mut Url, name: &str, value: &str) {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair(name, value);
}

pub(crate) fn parse_jsonpath(key: &str, text: &str) -> Result<JsonPath, TaskError> {
    JsonPath::parse(text)
        .map_err(|e| TaskError::Fatal(format!("`{key}` = {text:?} is not a JSONPath: {e}")))
}

/// The rate limiter configured by `rate_limit`/`rate_burst`, keyed by `key`.
pub(crate) fn limiter_from_args(
    args: &Map<String, Value>,
    key: &str,
    default: Option<&str>,
) -> Result<Option<Arc<RateLimiter>>, TaskError> {
    let text = match opt_str(args, "rate_limit")?.or(default) {
        None => return Ok(None),
        Some(t) => t,
    };
    let burst = opt_u64(args, "rate_burst")?;
    let spec = RateSpec::parse(text, burst).map_err(TaskError::Fatal)?;
    Ok(Some(RateLimiter::shared(key, spec)))
}

// ---------------------------------------------------------------------------------
// The http kind
// ---------------------------------------------------------------------------------

pub struct Http;

/// How to ask for the next page.
#[derive(Debug)]
enum Paginate {
    NextUrl(JsonPath),
    Cursor {
        path: JsonPath,
        param: String,
    },
    Page {
        param: String,
        start: u64,
    },
    Offset {
        offset_param: String,
        limit_param: String,
        limit: u64,
        start: u64,
    },
}

fn parse_paginate(v: &Value) -> Result<Paginate, TaskError> {
    let t = v.as_object().ok_or_else(|| {
        TaskError::Fatal(format!(
            "`paginate` must be a table such as {{ next_url = \"$.next\" }}, got {}",
            short(v)
        ))
    })?;
    let s = |k: &str| -> Result<Option<&str>, TaskError> {
        opt_str(t, k).map_err(|e| TaskError::Fatal(format!("paginate: {e}")))
    };
    let n = |k: &str| -> Result<Option<u64>, TaskError> {
        opt_u64(t, k).map_err(|e| TaskError::Fatal(format!("paginate: {e}")))
    };
    let styles = ["next_url", "cursor", "page_param", "offset_param"]
        .iter()
        .filter(|k| t.contains_key(**k))
        .count();
    if styles != 1 {
        return Err(TaskError::Fatal(
            "`paginate` needs exactly one of next_url, cursor (+ cursor_param), page_param (+ start) or offset_param (+ limit_param, limit)".into(),
        ));
    }
    if let Some(p) = s("next_url")? {
        return Ok(Paginate::NextUrl(parse_jsonpath("paginate.next_url", p)?));
    }
    if let Some(p) = s("cursor")? {
        return Ok(Paginate::Cursor {
            path: parse_jsonpath("paginate.cursor", p)?,
            param: s("cursor_param")?.unwrap_or("cursor").to_string(),
        });
    }
    if let Some(p) = s("page_param")? {
        return Ok(Paginate::Page {
            param: p.to_string(),
            start: n("start")?.unwrap_or(1),
        });
    }
    let offset_param = s("offset_param")?.unwrap_or("offset").to_string();
    let limit = n("limit")?.unwrap_or(100);
    if limit == 0 {
        return Err(TaskError::Fatal(
            "paginate: `limit` must be at least 1".into(),
        ));
    }
    Ok(Paginate::Offset {
        offset_param,
        limit_param: s("limit_param")?.unwrap_or("limit").to_string(),
        limit,
        start: n("start")?.unwrap_or(0),
    })
}

/// A page with nothing in it ends pagination.
fn is_empty_body(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// The base URL of an http(s) connection, ending in `/` so paths join below it.
fn connection_base(c: &crate::Connection) -> Result<Url, TaskError> {
    if c.conn_type != "http" && c.conn_type != "https" {
        return Err(TaskError::Fatal(format!(
            "connection `{}` is a {} connection; `http` needs an http:// or https:// URI",
            c.name, c.conn_type
        )));
    }
    let host = c.host.as_deref().unwrap_or("localhost");
    let port = c.port.map(|p| format!(":{p}")).unwrap_or_default();
    let path = c.schema.as_deref().unwrap_or("").trim_end_matches('/');
    let base = if path.is_empty() {
        format!("{}://{host}{port}/", c.conn_type)
    } else {
        format!("{}://{host}{port}/{path}/", c.conn_type)
    };
    Url::parse(&base)
        .map_err(|e| TaskError::Fatal(format!("connection `{}`: bad base URL {base}: {e}", c.name)))
}

#[async_trait::async_trait]
impl TaskKind for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn keys(&self) -> KindKeys {
        KindKeys {
            allowed: &[
                "method",
                "url",
                "query",
                "headers",
                "json",
                "form",
                "auth",
                "bearer",
                "connection",
                "timeout",
                "max_attempts",
                "retry_delay",
                "max_retry_wait",
                "rate_limit",
                "rate_burst",
                "paginate",
                "max_pages",
                "records",
            ],
            required: &["url"],
        }
    }

    async fn run(&self, ctx: &TaskContext, args: Map<String, Value>) -> Result<Value, TaskError> {
        let url_text = opt_str(&args, "url")?
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| TaskError::Fatal("`url` must be a non-empty string".into()))?;
        let mut secrets = Vec::new();
        let mut basic = None;
        let base = match opt_str(&args, "connection")? {
            Some(name) => {
                let c = ctx.conns.get(name)?;
                if let Some(login) = &c.login {
                    basic = Some((login.clone(), c.password.clone()));
                }
                secrets.extend(c.password.clone());
                Some(connection_base(c)?)
            }
            None => None,
        };
        let mut url = match (&base, Url::parse(url_text)) {
            (_, Ok(u)) => u,
            (Some(b), Err(_)) => b.join(url_text.trim_start_matches('/')).map_err(|e| {
                TaskError::Fatal(format!("`url` {url_text:?} does not join onto {b}: {e}"))
            })?,
            (None, Err(e)) => {
                return Err(TaskError::Fatal(format!(
                    "`url` {url_text:?} is not an absolute URL ({e}); give a full URL or a `connection` whose URI is the base"
                )))
            }
        };
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(TaskError::Fatal(format!(
                "`url` must be http or https, got {}",
                url.scheme()
            )));
        }
        if let Some(name) = opt_str(&args, "auth")? {
            let c = ctx.conns.get(name)?;
            let login = c.login.clone().ok_or_else(|| {
                TaskError::Fatal(format!(
                    "`auth` connection `{name}` has no login (expected scheme://login:password@host)"
                ))
            })?;
            secrets.extend(c.password.clone());
            basic = Some((login, c.password.clone()));
        }
        let bearer = opt_str(&args, "bearer")?.map(str::to_string);
        secrets.extend(bearer.clone());
        if let Some(q) = opt_table(&args, "query")? {
            let extra = pairs("query", q)?;
            url.query_pairs_mut().extend_pairs(extra);
        }
        let mut headers = HeaderMap::new();
        if let Some(h) = opt_table(&args, "headers")? {
            for (k, v) in pairs("headers", h)? {
                let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                    TaskError::Fatal(format!("`headers`: {k:?} is not a header name"))
                })?;
                let value = HeaderValue::from_str(&v).map_err(|_| {
                    TaskError::Fatal(format!(
                        "`headers`: the value of {k} is not a valid header value"
                    ))
                })?;
                headers.append(name, value);
            }
        }
        let body = match (args.get("json"), opt_table(&args, "form")?) {
            (Some(_), Some(_)) => {
                return Err(TaskError::Fatal(
                    "give either `json` or `form` as the body, not both".into(),
                ))
            }
            (Some(j), None) if !j.is_null() => Body::Json(j.clone()),
            (_, Some(f)) => Body::Form(pairs("form", f)?),
            _ => Body::None,
        };
        let method = match opt_str(&args, "method")? {
            None => Method::GET,
            Some(m) => Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                .map_err(|_| TaskError::Fatal(format!("`method` {m:?} is not an HTTP method")))?,
        };
        let policy = RetryPolicy::from_args(&args)?;
        let limiter_key = match opt_str(&args, "connection")? {
            Some(name) => format!("conn:{}", name.to_lowercase()),
            None => format!(
                "host:{}:{}",
                url.host_str().unwrap_or(""),
                url.port_or_known_default().unwrap_or(0)
            ),
        };
        let limiter = limiter_from_args(&args, &limiter_key, None)?;
        let paginate = match args.get("paginate") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_paginate(v)?),
        };
        let max_pages = opt_u64(&args, "max_pages")?.unwrap_or(100).max(1);
        let records_path = match opt_str(&args, "records")? {
            Some(p) => Some(parse_jsonpath("records", p)?),
            None => None,
        };

        let fetcher = Fetcher {
            ctx,
            policy,
            limiter,
            secrets,
        };
        let mut req = Req {
            method,
            url,
            headers,
            body,
            basic,
            bearer,
        };
        match &paginate {
            Some(Paginate::Page { param, start }) => {
                set_query(&mut req.url, param, &start.to_string())
            }
            Some(Paginate::Offset {
                offset_param,
                limit_param,
                limit,
                start,
            }) => {
                set_query(&mut req.url, offset_param, &start.to_string());
                set_query(&mut req.url, limit_param, &limit.to_string());
            }
            _ => {}
        }

        let mut records: Vec<Value> = Vec::new();
        let mut bodies: Vec<Value> = Vec::new();
        let mut pages = 0u64;
        let mut last_cursor: Option<String> = None;
        let mut page_no = match &paginate {
            Some(Paginate::Page { start, .. }) | Some(Paginate::Offset { start, .. }) => *start,
            _ => 0,
        };
        loop {
            pages += 1;
            let body = fetcher.get_json(&req).await?;
            let page_records: Option<Vec<Value>> = records_path
                .as_ref()
                .map(|p| p.query(&body).all().into_iter().cloned().collect());
            let empty = match &page_records {
                Some(r) => r.is_empty(),
                None => is_empty_body(&body),
            };
            let Some(style) = &paginate else {
                let n = page_records.as_ref().map(|r| r.len()).unwrap_or(1);
                ctx.metrics.read(n as u64, 0);
                ctx.log.info(&format!("read {n} record(s)"));
                return Ok(match page_records {
                    Some(r) => Value::Array(r),
                    None => body,
                });
            };
            if empty {
                ctx.log.info(&format!("page {pages} is empty: last page"));
                break;
            }
            let next = match style {
                Paginate::NextUrl(path) => match path.query(&body).first() {
                    Some(Value::String(s)) if !s.trim().is_empty() => {
                        Some(req.url.join(s.trim()).map_err(|e| {
                            TaskError::Failed(format!(
                                "page {pages}: next URL {s:?} is not a URL: {e}"
                            ))
                        })?)
                    }
                    _ => None,
                },
                Paginate::Cursor { path, param } => {
                    let cursor = match path.query(&body).first() {
                        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                        Some(Value::Number(n)) => Some(n.to_string()),
                        _ => None,
                    };
                    match cursor {
                        Some(c) if last_cursor.as_deref() == Some(c.as_str()) => {
                            ctx.log.warn(&format!(
                                "page {pages}: the API returned the same cursor again; stopping"
                            ));
                            None
                        }
                        Some(c) => {
                            let mut u = req.url.clone();
                            set_query(&mut u, param, &c);
                            last_cursor = Some(c);
                            Some(u)
                        }
                        None => None,
                    }
                }
                Paginate::Page { param, .. } => {
                    page_no += 1;
                    let mut u = req.url.clone();
                    set_query(&mut u, param, &page_no.to_string());
                    Some(u)
                }
                Paginate::Offset {
                    offset_param,
                    limit,
                    ..
                } => {
                    page_no += limit;
                    let mut u = req.url.clone();
                    set_query(&mut u, offset_param, &page_no.to_string());
                    Some(u)
                }
            };
            match page_records {
                Some(r) => records.extend(r),
                None => bodies.push(body),
            }
            match next {
                None => break,
                Some(_) if pages >= max_pages => {
                    ctx.log.warn(&format!(
                        "stopped after max_pages = {max_pages}; more pages remain"
                    ));
                    break;
                }
                Some(u) => req.url = u,
            }
        }
        let out = if records_path.is_some() {
            records
        } else {
            bodies
        };
        ctx.metrics.read(out.len() as u64, 0);
        ctx.log.info(&format!(
            "read {} record(s) from {pages} page(s)",
            out.len()
        ));
        Ok(Value::Array(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        let later = SystemTime::now() + Duration::from_secs(30);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).expect("date");
        assert!(
            d <= Duration::from_secs(30) && d >= Duration::from_secs(28),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn rate_specs() {
        let r = RateSpec::parse("10/s", None).expect("parses");
        assert_eq!((r.per_sec, r.burst), (10.0, 10.0));
        let r = RateSpec::parse("120/m", Some(5)).expect("parses");
        assert_eq!((r.per_sec, r.burst), (2.0, 5.0));
        assert!(RateSpec::parse("ten/s", None).is_err());
        assert!(RateSpec::parse("10/week", None).is_err());
    }

    #[test]
    fn shown_urls_hide_credentials() {
        let ctx = TaskContext::detached("d", "t");
        let f = Fetcher {
            ctx: &ctx,
            policy: RetryPolicy::from_args(&Map::new()).expect("defaults"),
            limiter: None,
            secrets: vec!["tok123".into()],
        };
        let u = Url::parse("https://u:pw@h/x?key=ABCDEF&appid=1&q=tok123").expect("url");
        let shown = f.show(&u);
        assert!(!shown.contains("ABCDEF") && !shown.contains("pw@") && !shown.contains("tok123"));
        assert!(shown.contains("appid=1"), "{shown}");
    }
}

//! `crawl`: crawls news-like sites and emits each new article once, as a record of
//! fields picked out by CSS selectors.
//!
//! The model: *list pages* — the `start_urls`, and the pages reached from them through
//! `follow` links (categories, pagination) up to `max_depth` hops — yield *article links*
//! (`article_links`). Article pages are fetched and `fields` are extracted from them into
//! one record each: `{url, <fields>…, fetched_at}`, `url` being the canonical URL. The
//! try's value is the array of records.
//!
//! Keys: `start_urls` (string or array, required), `article_links` (required), `fields`
//! (required), `follow`, `max_depth` (1), `same_host` (true), `timezone` ("UTC"),
//! `user_agent` ("Sluice/0.1 (+https://github.com/sluice)"), `concurrency` (16),
//! `per_host_concurrency` (2), `per_host_delay` ("0s"), `max_pages` (1000),
//! `max_articles`, `encoding`, `robots` (true), `dedup` (true), and `timeout`,
//! `max_attempts`, `retry_delay`, `max_retry_wait` as in `http`.
//!
//! - A link rule (`follow`, `article_links`) is a CSS selector string, a table
//!   `{ selector = "…", attr = "href" }`, or an array of either. Links resolve against
//!   `<base href>` or the page URL; only http(s) links count.
//! - A field is a selector string (the text of the first match) or a table `{ selector,
//!   attr, regex, date_format, timezone, type, required, all }`. The value of each
//!   matching element — attribute `attr` or its text, whitespace collapsed — goes through
//!   `regex` (first capture group, else the whole match), then `date_format` (a chrono
//!   format, `"rfc3339"` or `"rfc2822"`, giving RFC 3339 in `timezone` when the text has
//!   no offset) or `type` ("string", "int", "float"; commas are dropped before parsing
//!   numbers). The first element whose value passes is the field's value; with `all`,
//!   every passing value, as an array. A missing field is null (`[]` with `all`); a missing
//!   `required` field skips the article (logged, retried next run).
//! - Canonical URL: `<link rel=canonical>` if present, else the fetched URL (after
//!   redirects); the fragment and tracking parameters (`utm_*`, `fbclid`, `gclid`) are
//!   dropped. Dedup keys are canonical URLs (up to 200 characters; longer ones as
//!   `sha256:<hex>`).
//! - Once only: article links are looked up in the committed task state before they are
//!   fetched, so articles earlier successful runs emitted are not even requested; each
//!   emitted article proposes its key (and its link's key, when it differs) with the
//!   fetch time. Proposals are committed with the run's success, so after a failed run
//!   the same articles come again. `dedup = false` neither reads nor proposes state.
//! - robots.txt (RFC 9309) is fetched once per host (`host:port`) per run: the groups
//!   naming our user-agent token (the `user_agent` up to its first `/` or space), else
//!   `*`; the longest matching Allow/Disallow wins (Allow on ties; `*` and `$`
//!   supported); `Crawl-delay` raises the host's delay. A 4xx robots.txt allows all; a
//!   5xx or an unreachable one also allows all, with a warning. Disallowed URLs are not
//!   fetched and are counted.
//! - Politeness: at most `per_host_concurrency` requests in flight per host and
//!   `per_host_delay` (or the Crawl-delay, whichever is longer) between the starts of two
//!   requests to a host, retries and robots.txt included; `concurrency` pages in flight
//!   in all.
//! - Charset: `encoding` if given, else the Content-Type charset, else a `<meta charset>`
//!   or `<meta http-equiv=content-type>` in the first 1024 bytes, else UTF-8 (a BOM wins).
//! - Errors: a start URL that cannot be fetched (after retries) fails the try naming it;
//!   other pages that fail (404, exhausted retries) are logged, counted and skipped.
//!   Invalid selectors, regexes, date formats or time zones fail at once (`Fatal`)
//!   naming the key.
//! - Metrics: `records_in` = pages fetched, `bytes_in` = their bytes, `records_out` =
//!   articles emitted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use futures::StreamExt;
use regex::Regex;
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use reqwest::StatusCode;
use scraper::{ElementRef, Html, Selector};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sluice_core::KindKeys;
use tokio::sync::Semaphore;
use url::Url;

use crate::csv_kind::encoding_of;
use crate::http::{
    client, describe_reqwest_error, opt_duration, opt_u64, parse_retry_after, sleep_or_cancel,
    RetryPolicy,
};
use crate::{opt_str, short, TaskContext, TaskError, TaskKind};

const DEFAULT_USER_AGENT: &str = "Sluice/0.1 (+https://github.com/sluice)";
/// Keys per state lookup, to keep each query bounded.
const STATE_CHUNK: usize = 500;
/// Canonical URLs longer than this are kept in the state as a SHA-256.
const MAX_KEY_CHARS: usize = 200;
/// How far into a page a `<meta charset>` is looked for (as browsers do).
const SNIFF_BYTES: usize = 1024;
/// Query parameters that only track where a click came from.
const TRACKING_PARAMS: &[&str] = &["fbclid", "gclid"];

pub struct Crawl;

// ---------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------

/// Links picked from a page.
#[derive(Debug)]
struct LinkRule {
    selector: Selector,
    attr: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum FieldType {
    String,
    Int,
    Float,
}

#[derive(Debug)]
enum DateFormat {
    Rfc3339,
    Rfc2822,
    Strftime(String),
}

#[derive(Debug)]
struct Field {
    name: String,
    selector: Selector,
    attr: Option<String>,
    regex: Option<Regex>,
    date: Option<(DateFormat, Tz)>,
    ty: FieldType,
    required: bool,
    all: bool,
}

struct Opts {
    start_urls: Vec<Url>,
    follow: Vec<LinkRule>,
    article_links: Vec<LinkRule>,
    fields: Vec<Field>,
    max_depth: u64,
    same_host: bool,
    user_agent: HeaderValue,
    ua_token: String,
    concurrency: usize,
    per_host_concurrency: usize,
    per_host_delay: Duration,
    max_pages: u64,
    max_articles: Option<u64>,
    encoding: Option<&'static encoding_rs::Encoding>,
    robots: bool,
    dedup: bool,
    policy: RetryPolicy,
}

fn opt_bool(args: &Map<String, Value>, key: &str, shown: &str) -> Result<Option<bool>, TaskError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(TaskError::Fatal(format!(
            "`{shown}` must be true or false, got {}",
            short(other)
        ))),
    }
}

fn parse_selector(key: &str, text: &str) -> Result<Selector, TaskError> {
    if text.trim().is_empty() {
        return Err(TaskError::Fatal(format!(
            "`{key}` is an empty CSS selector"
        )));
    }
    Selector::parse(text).map_err(|e| {
        let why = match e {
            scraper::error::SelectorErrorKind::UnexpectedSelectorParseError(_) => {
                "unexpected syntax".to_string()
            }
            other => other.to_string(),
        };
        TaskError::Fatal(format!(
            "`{key}` = {text:?} is not a valid CSS selector: {why}"
        ))
    })
}

fn parse_tz(key: &str, text: &str) -> Result<Tz, TaskError> {
    text.trim().parse::<Tz>().map_err(|_| {
        TaskError::Fatal(format!(
            "`{key}` = {text:?} is not an IANA time zone such as \"Asia/Seoul\" or \"UTC\""
        ))
    })
}

/// `follow` / `article_links`: a selector, a `{selector, attr}` table, or an array of them.
fn parse_rules(args: &Map<String, Value>, key: &str) -> Result<Vec<LinkRule>, TaskError> {
    fn one(key: &str, v: &Value) -> Result<LinkRule, TaskError> {
        match v {
            Value::String(s) => Ok(LinkRule {
                selector: parse_selector(key, s)?,
                attr: "href".into(),
            }),
            Value::Object(t) => {
                if let Some(k) = t.keys().find(|k| *k != "selector" && *k != "attr") {
                    return Err(TaskError::Fatal(format!(
                        "`{key}`: unknown key `{k}` (expected selector, attr)"
                    )));
                }
                let sel = opt_str(t, "selector")
                    .map_err(|_| {
                        TaskError::Fatal(format!("`{key}.selector` must be a string"))
                    })?
                    .ok_or_else(|| TaskError::Fatal(format!("`{key}` needs a `selector`")))?;
                let attr = opt_str(t, "attr")
                    .map_err(|_| TaskError::Fatal(format!("`{key}.attr` must be a string")))?
                    .unwrap_or("href");
                Ok(LinkRule {
                    selector: parse_selector(&format!("{key}.selector"), sel)?,
                    attr: attr.to_string(),
                })
            }
            other => Err(TaskError::Fatal(format!(
                "`{key}` must be a CSS selector, a {{ selector, attr }} table or an array of them, got {}",
                short(other)
            ))),
        }
    }
    match args.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| one(&format!("{key}[{i}]"), v))
            .collect(),
        Some(v) => Ok(vec![one(key, v)?]),
    }
}

const FIELD_KEYS: &[&str] = &[
    "selector",
    "attr",
    "regex",
    "date_format",
    "timezone",
    "type",
    "required",
    "all",
];

fn parse_fields(args: &Map<String, Value>, default_tz: Tz) -> Result<Vec<Field>, TaskError> {
    let table = match args.get("fields") {
        Some(Value::Object(t)) if !t.is_empty() => t,
        other => {
            return Err(TaskError::Fatal(format!(
                "`fields` must be a non-empty table of name = selector or {{ selector, attr, regex, date_format, … }}, got {}",
                other.map(short).unwrap_or_else(|| "nothing".into())
            )))
        }
    };
    let mut out = Vec::with_capacity(table.len());
    for (name, spec) in table {
        let key = format!("fields.{name}");
        if name == "url" || name == "fetched_at" {
            return Err(TaskError::Fatal(format!(
                "`{key}`: `{name}` is set by the crawl itself; name the field differently"
            )));
        }
        let field = match spec {
            Value::String(s) => Field {
                name: name.clone(),
                selector: parse_selector(&key, s)?,
                attr: None,
                regex: None,
                date: None,
                ty: FieldType::String,
                required: false,
                all: false,
            },
            Value::Object(t) => {
                if let Some(k) = t.keys().find(|k| !FIELD_KEYS.contains(&k.as_str())) {
                    return Err(TaskError::Fatal(format!(
                        "`{key}`: unknown key `{k}` (expected one of {})",
                        FIELD_KEYS.join(", ")
                    )));
                }
                let s = |k: &str| -> Result<Option<&str>, TaskError> {
                    opt_str(t, k)
                        .map_err(|_| TaskError::Fatal(format!("`{key}.{k}` must be a string")))
                };
                let sel = s("selector")?
                    .ok_or_else(|| TaskError::Fatal(format!("`{key}` needs a `selector`")))?;
                let regex = match s("regex")? {
                    None => None,
                    Some(r) => Some(Regex::new(r).map_err(|e| {
                        TaskError::Fatal(format!("`{key}.regex` = {r:?} is not a valid regex: {e}"))
                    })?),
                };
                let tz = match s("timezone")? {
                    None => default_tz,
                    Some(z) => parse_tz(&format!("{key}.timezone"), z)?,
                };
                let date = match s("date_format")? {
                    None => None,
                    Some(f) => Some((parse_date_format(&format!("{key}.date_format"), f)?, tz)),
                };
                let ty = match s("type")? {
                    None | Some("string") => FieldType::String,
                    Some("int") => FieldType::Int,
                    Some("float") => FieldType::Float,
                    Some(other) => {
                        return Err(TaskError::Fatal(format!(
                            "`{key}.type` = {other:?}: use \"string\", \"int\" or \"float\""
                        )))
                    }
                };
                if date.is_some() && ty != FieldType::String {
                    return Err(TaskError::Fatal(format!(
                        "`{key}`: `date_format` gives a string; leave out `type`"
                    )));
                }
                Field {
                    name: name.clone(),
                    selector: parse_selector(&format!("{key}.selector"), sel)?,
                    attr: s("attr")?.map(str::to_string),
                    regex,
                    date,
                    ty,
                    required: opt_bool(t, "required", &format!("{key}.required"))?.unwrap_or(false),
                    all: opt_bool(t, "all", &format!("{key}.all"))?.unwrap_or(false),
                }
            }
            other => {
                return Err(TaskError::Fatal(format!(
                    "`{key}` must be a CSS selector or a table, got {}",
                    short(other)
                )))
            }
        };
        out.push(field);
    }
    Ok(out)
}

fn parse_date_format(key: &str, f: &str) -> Result<DateFormat, TaskError> {
    match f.trim().to_ascii_lowercase().as_str() {
        "rfc3339" | "iso8601" => return Ok(DateFormat::Rfc3339),
        "rfc2822" => return Ok(DateFormat::Rfc2822),
        _ => {}
    }
    if f.trim().is_empty() || StrftimeItems::new(f).any(|i| matches!(i, Item::Error)) {
        return Err(TaskError::Fatal(format!(
            "`{key}` = {f:?} is not a valid date format (chrono strftime, e.g. \"%Y.%m.%d %H:%M\", or \"rfc3339\")"
        )));
    }
    Ok(DateFormat::Strftime(f.to_string()))
}

fn parse_start_urls(args: &Map<String, Value>) -> Result<Vec<Url>, TaskError> {
    let texts: Vec<&str> = match args.get("start_urls") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str().ok_or_else(|| {
                    TaskError::Fatal(format!(
                        "`start_urls` items must be strings, got {}",
                        short(v)
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(TaskError::Fatal(format!(
                "`start_urls` must be a URL or an array of URLs, got {}",
                other.map(short).unwrap_or_else(|| "nothing".into())
            )))
        }
    };
    let mut out: Vec<Url> = Vec::new();
    for t in texts {
        let u = Url::parse(t.trim()).map_err(|e| {
            TaskError::Fatal(format!("`start_urls`: {t:?} is not an absolute URL: {e}"))
        })?;
        if u.scheme() != "http" && u.scheme() != "https" {
            return Err(TaskError::Fatal(format!(
                "`start_urls`: {t:?} is not an http or https URL"
            )));
        }
        let u = normalize(u);
        if !out.contains(&u) {
            out.push(u);
        }
    }
    if out.is_empty() {
        return Err(TaskError::Fatal("`start_urls` is empty".into()));
    }
    Ok(out)
}

fn positive(args: &Map<String, Value>, key: &str, default: u64) -> Result<u64, TaskError> {
    match opt_u64(args, key)? {
        None => Ok(default),
        Some(0) => Err(TaskError::Fatal(format!("`{key}` must be at least 1"))),
        Some(n) => Ok(n),
    }
}

impl Opts {
    fn from_args(args: &Map<String, Value>) -> Result<Opts, TaskError> {
        let start_urls = parse_start_urls(args)?;
        let article_links = parse_rules(args, "article_links")?;
        if article_links.is_empty() {
            return Err(TaskError::Fatal(
                "`article_links` is required: the CSS selector of links from list pages to articles"
                    .into(),
            ));
        }
        let tz = match opt_str(args, "timezone")? {
            None => Tz::UTC,
            Some(z) => parse_tz("timezone", z)?,
        };
        let ua_text = opt_str(args, "user_agent")?
            .unwrap_or(DEFAULT_USER_AGENT)
            .trim();
        let user_agent = HeaderValue::from_str(ua_text)
            .ok()
            .filter(|_| !ua_text.is_empty())
            .ok_or_else(|| {
                TaskError::Fatal(format!(
                    "`user_agent` = {ua_text:?} is not a valid header value"
                ))
            })?;
        let ua_token = ua_text
            .split(|c: char| c == '/' || c.is_whitespace())
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let encoding = match args.get("encoding") {
            None | Some(Value::Null) => None,
            Some(_) => Some(encoding_of(args)?),
        };
        Ok(Opts {
            start_urls,
            follow: parse_rules(args, "follow")?,
            article_links,
            fields: parse_fields(args, tz)?,
            max_depth: opt_u64(args, "max_depth")?.unwrap_or(1),
            same_host: opt_bool(args, "same_host", "same_host")?.unwrap_or(true),
            user_agent,
            ua_token,
            concurrency: positive(args, "concurrency", 16)?.min(1024) as usize,
            per_host_concurrency: positive(args, "per_host_concurrency", 2)?.min(1024) as usize,
            per_host_delay: opt_duration(args, "per_host_delay")?.unwrap_or(Duration::ZERO),
            max_pages: positive(args, "max_pages", 1000)?,
            max_articles: match opt_u64(args, "max_articles")? {
                Some(0) => {
                    return Err(TaskError::Fatal("`max_articles` must be at least 1".into()))
                }
                n => n,
            },
            encoding,
            robots: opt_bool(args, "robots", "robots")?.unwrap_or(true),
            dedup: opt_bool(args, "dedup", "dedup")?.unwrap_or(true),
            policy: RetryPolicy::from_args(args)?,
        })
    }
}

// ---------------------------------------------------------------------------------
// URLs
// ---------------------------------------------------------------------------------

/// Drops the fragment and tracking parameters.
fn normalize(mut url: Url) -> Url {
    url.set_fragment(None);
    let tracking = |k: &str| {
        let k = k.to_ascii_lowercase();
        k.starts_with("utm_") || TRACKING_PARAMS.contains(&k.as_str())
    };
    if url.query_pairs().any(|(k, _)| tracking(&k)) {
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| !tracking(k))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    url
}

/// `host:port`: what per-host limits and robots.txt are keyed by.
fn host_key(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// The state key of a (normalized) URL.
fn dedup_key(url: &Url) -> String {
    let s = url.as_str();
    if s.chars().count() <= MAX_KEY_CHARS {
        s.to_string()
    } else {
        let digest = Sha256::digest(s.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }
}

/// Resolves a link found in a page; only http(s) URLs are kept.
fn resolve(base: &Url, href: &str) -> Option<Url> {
    let href = href.trim();
    if href.is_empty() || href.starts_with('#') {
        return None;
    }
    let u = base.join(href).ok()?;
    matches!(u.scheme(), "http" | "https").then(|| normalize(u))
}

/// `items` reordered round-robin by host, so one host's backlog does not hold the
/// others back inside the bounded window of pages in flight.
fn interleave<T>(items: Vec<T>, host: impl Fn(&T) -> String) -> Vec<T> {
    let mut queues: Vec<(String, VecDeque<T>)> = Vec::new();
    for it in items {
        let h = host(&it);
        match queues.iter_mut().find(|(k, _)| *k == h) {
            Some((_, q)) => q.push_back(it),
            None => queues.push((h, VecDeque::from([it]))),
        }
    }
    let mut out = Vec::new();
    loop {
        let mut any = false;
        for (_, q) in queues.iter_mut() {
            if let Some(it) = q.pop_front() {
                out.push(it);
                any = true;
            }
        }
        if !any {
            return out;
        }
    }
}

// ---------------------------------------------------------------------------------
// Charset
// ---------------------------------------------------------------------------------

fn charset_param(content_type: &str) -> Option<&str> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| v.trim().trim_matches(|c| c == '"' || c == '\''))
    })
}

/// The charset a `<meta>` in the first 1024 bytes declares.
fn sniff_meta_charset(body: &[u8]) -> Option<&'static encoding_rs::Encoding> {
    static META: OnceLock<regex::bytes::Regex> = OnceLock::new();
    let re = META.get_or_init(|| {
        regex::bytes::Regex::new(r#"(?i-u)<meta[^>]*?charset\s*=\s*["']?\s*([a-z0-9_.:\-]+)"#)
            .expect("static regex")
    });
    let head = &body[..body.len().min(SNIFF_BYTES)];
    re.captures_iter(head)
        .find_map(|c| encoding_rs::Encoding::for_label(c.get(1)?.as_bytes()))
        .map(|e| {
            // As browsers do: a page cannot declare itself UTF-16 from inside.
            if e == encoding_rs::UTF_16LE || e == encoding_rs::UTF_16BE {
                encoding_rs::UTF_8
            } else {
                e
            }
        })
}

/// Decodes a page: `forced` encoding, else the Content-Type charset, else a `<meta>`,
/// else UTF-8; a byte-order mark wins over all of them.
fn decode(
    body: &[u8],
    content_type: Option<&str>,
    forced: Option<&'static encoding_rs::Encoding>,
) -> String {
    let enc = forced
        .or_else(|| {
            content_type
                .and_then(charset_param)
                .and_then(|l| encoding_rs::Encoding::for_label(l.as_bytes()))
        })
        .or_else(|| sniff_meta_charset(body))
        .unwrap_or(encoding_rs::UTF_8);
    enc.decode(body).0.into_owned()
}

// ---------------------------------------------------------------------------------
// robots.txt
// ---------------------------------------------------------------------------------

/// The rules of robots.txt that apply to us.
#[derive(Debug, Default)]
struct Robots {
    /// (allow, normalized pattern)
    rules: Vec<(bool, String)>,
    crawl_delay: Option<Duration>,
}

/// Percent-encodes non-ASCII bytes and upper-cases existing escapes, so patterns and
/// paths compare byte for byte.
fn normalize_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            out.push('%');
            out.push(b[i + 1].to_ascii_uppercase() as char);
            out.push(b[i + 2].to_ascii_uppercase() as char);
            i += 3;
            continue;
        }
        if c.is_ascii() {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
        i += 1;
    }
    out
}

/// Does `path` match a robots.txt pattern (`*` any run of characters, `$` at the end
/// anchors)?
fn pattern_matches(pattern: &str, path: &str) -> bool {
    let (pat, anchored) = match pattern.strip_suffix('$') {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    let parts: Vec<&str> = pat.split('*').collect();
    let first = parts[0];
    if !path.starts_with(first) {
        return false;
    }
    if parts.len() == 1 {
        return !anchored || path.len() == first.len();
    }
    let mut pos = first.len();
    let last = parts[parts.len() - 1];
    for part in &parts[1..parts.len() - 1] {
        match path[pos..].find(part) {
            Some(i) => pos += i + part.len(),
            None => return false,
        }
    }
    if anchored {
        path.len() >= pos + last.len() && path.ends_with(last)
    } else {
        path[pos..].contains(last)
    }
}

impl Robots {
    /// The rules for user-agent `token` (lower case): the groups naming it, else those
    /// for `*`, else none (all allowed).
    fn parse(text: &str, token: &str) -> Robots {
        #[derive(Default)]
        struct Group {
            agents: Vec<String>,
            rules: Vec<(bool, String)>,
            delay: Option<f64>,
        }
        let mut groups: Vec<Group> = Vec::new();
        let mut in_agents = false;
        for line in text.trim_start_matches('\u{feff}').lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "user-agent" | "useragent" | "user agent" => {
                    if !in_agents || groups.is_empty() {
                        groups.push(Group::default());
                    }
                    let agent = v
                        .split(|c: char| c == '/' || c.is_whitespace())
                        .next()
                        .unwrap_or("")
                        .to_ascii_lowercase();
                    if let Some(g) = groups.last_mut() {
                        g.agents.push(agent);
                    }
                    in_agents = true;
                }
                "allow" | "disallow" => {
                    in_agents = false;
                    if let (Some(g), false) = (groups.last_mut(), v.is_empty()) {
                        g.rules.push((k == "allow", normalize_path(v)));
                    }
                }
                "crawl-delay" => {
                    in_agents = false;
                    if let Some(g) = groups.last_mut() {
                        g.delay = v.parse::<f64>().ok().filter(|d| d.is_finite() && *d >= 0.0);
                    }
                }
                // Sitemap and unknown lines neither belong to nor end a group.
                _ => {}
            }
        }
        let mine: Vec<&Group> = groups
            .iter()
            .filter(|g| g.agents.iter().any(|a| a == token))
            .collect();
        let chosen = if mine.is_empty() {
            groups
                .iter()
                .filter(|g| g.agents.iter().any(|a| a == "*"))
                .collect()
        } else {
            mine
        };
        Robots {
            rules: chosen.iter().flat_map(|g| g.rules.clone()).collect(),
            crawl_delay: chosen
                .iter()
                .filter_map(|g| g.delay)
                .fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.max(d))))
                .map(|d| Duration::from_secs_f64(d.min(86_400.0))),
        }
    }

    fn allowed(&self, url: &Url) -> bool {
        let mut path = url.path().to_string();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        if path == "/robots.txt" {
            return true;
        }
        let path = normalize_path(&path);
        let mut best: Option<(usize, bool)> = None;
        for (allow, pat) in &self.rules {
            if pattern_matches(pat, &path) {
                let better = match best {
                    None => true,
                    Some((len, a)) => pat.len() > len || (pat.len() == len && *allow && !a),
                };
                if better {
                    best = Some((pat.len(), *allow));
                }
            }
        }
        best.is_none_or(|(_, allow)| allow)
    }
}

// ---------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn element_text(el: &ElementRef) -> String {
    squash(&el.text().collect::<String>())
}

/// `<base href>` or the page's own URL.
fn base_url(doc: &Html, page: &Url) -> Url {
    static BASE: OnceLock<Selector> = OnceLock::new();
    let sel = BASE.get_or_init(|| Selector::parse("base[href]").expect("static selector"));
    doc.select(sel)
        .next()
        .and_then(|b| b.value().attr("href"))
        .and_then(|h| page.join(h.trim()).ok())
        .unwrap_or_else(|| page.clone())
}

fn links(doc: &Html, base: &Url, rules: &[LinkRule]) -> Vec<Url> {
    let mut out = Vec::new();
    for r in rules {
        for el in doc.select(&r.selector) {
            if let Some(u) = el.value().attr(&r.attr).and_then(|h| resolve(base, h)) {
                out.push(u);
            }
        }
    }
    out
}

fn localize(naive: NaiveDateTime, tz: Tz) -> Option<String> {
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|d| d.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn parse_date(s: &str, format: &DateFormat, tz: Tz) -> Option<String> {
    let fixed = |d: DateTime<chrono::FixedOffset>| d.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    match format {
        DateFormat::Rfc3339 => DateTime::parse_from_rfc3339(s).map(fixed).ok().or_else(|| {
            [
                "%Y-%m-%dT%H:%M:%S%.f",
                "%Y-%m-%d %H:%M:%S%.f",
                "%Y-%m-%dT%H:%M",
            ]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
            .and_then(|n| localize(n, tz))
        }),
        DateFormat::Rfc2822 => DateTime::parse_from_rfc2822(s).map(fixed).ok(),
        DateFormat::Strftime(f) => {
            if let Ok(d) = DateTime::parse_from_str(s, f) {
                return Some(fixed(d));
            }
            if let Ok(n) = NaiveDateTime::parse_from_str(s, f) {
                return localize(n, tz);
            }
            NaiveDate::parse_from_str(s, f)
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .and_then(|n| localize(n, tz))
        }
    }
}

impl Field {
    /// One element's raw value through regex, date and type.
    fn convert(&self, raw: &str) -> Result<Value, String> {
        let mut v = raw.trim().to_string();
        if let Some(re) = &self.regex {
            let caps = re
                .captures(&v)
                .ok_or_else(|| format!("{:?} does not match regex `{}`", short_text(&v), re))?;
            v = caps
                .get(1)
                .or_else(|| caps.get(0))
                .map(|m| m.as_str().trim().to_string())
                .unwrap_or_default();
        }
        if v.is_empty() {
            return Err("empty value".into());
        }
        if let Some((format, tz)) = &self.date {
            return parse_date(&v, format, *tz)
                .map(Value::String)
                .ok_or_else(|| format!("{:?} does not match date_format", short_text(&v)));
        }
        let number = || v.replace([',', '_', ' '], "");
        match self.ty {
            FieldType::String => Ok(Value::String(v)),
            FieldType::Int => number()
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| format!("{:?} is not an integer", short_text(&v))),
            FieldType::Float => number()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| format!("{:?} is not a number", short_text(&v))),
        }
    }

    /// The field's value in `doc`, or why it has none.
    fn extract(&self, doc: &Html) -> Result<Value, String> {
        let mut values = Vec::new();
        let mut why = format!("no element matches the selector of `{}`", self.name);
        for el in doc.select(&self.selector) {
            let raw = match &self.attr {
                Some(a) => match el.value().attr(a) {
                    Some(v) => v.to_string(),
                    None => {
                        why = format!("the matching elements have no `{a}` attribute");
                        continue;
                    }
                },
                None => element_text(&el),
            };
            match self.convert(&raw) {
                Ok(v) => {
                    values.push(v);
                    if !self.all {
                        break;
                    }
                }
                Err(e) => why = e,
            }
        }
        match (self.all, values.is_empty()) {
            (_, true) => Err(why),
            (true, false) => Ok(Value::Array(values)),
            (false, false) => Ok(values.swap_remove(0)),
        }
    }
}

fn short_text(s: &str) -> String {
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s.to_string()
    }
}

/// What an article page holds: its canonical URL and its fields, or the required field
/// it lacks (name, why).
struct Parsed {
    canonical: Url,
    fields: Result<Map<String, Value>, (String, String)>,
}

fn parse_article(text: &str, page: &Url, fields: &[Field]) -> Parsed {
    static CANONICAL: OnceLock<Selector> = OnceLock::new();
    let doc = Html::parse_document(text);
    let sel = CANONICAL.get_or_init(|| {
        Selector::parse(r#"link[rel~="canonical"][href]"#).expect("static selector")
    });
    let base = base_url(&doc, page);
    let canonical = doc
        .select(sel)
        .next()
        .and_then(|l| l.value().attr("href"))
        .and_then(|h| resolve(&base, h))
        .unwrap_or_else(|| normalize(page.clone()));
    let mut map = Map::new();
    for f in fields {
        match f.extract(&doc) {
            Ok(v) => {
                map.insert(f.name.clone(), v);
            }
            Err(why) if f.required => {
                return Parsed {
                    canonical,
                    fields: Err((f.name.clone(), why)),
                }
            }
            Err(_) => {
                map.insert(
                    f.name.clone(),
                    if f.all {
                        Value::Array(Vec::new())
                    } else {
                        Value::Null
                    },
                );
            }
        }
    }
    Parsed {
        canonical,
        fields: Ok(map),
    }
}

/// Follow and article links of a list page.
fn parse_list(text: &str, page: &Url, o: &Opts, follow: bool) -> (Vec<Url>, Vec<Url>) {
    let doc = Html::parse_document(text);
    let base = base_url(&doc, page);
    let next = if follow {
        links(&doc, &base, &o.follow)
    } else {
        Vec::new()
    };
    (next, links(&doc, &base, &o.article_links))
}

// ---------------------------------------------------------------------------------
// Fetching
// ---------------------------------------------------------------------------------

/// Per-host politeness: requests in flight, spacing of request starts, robots.txt.
struct Host {
    slots: Semaphore,
    pace: Mutex<Pace>,
    robots: tokio::sync::OnceCell<Arc<Robots>>,
}

struct Pace {
    last_start: Option<Instant>,
    delay: Duration,
}

struct Page {
    url: Url,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// Why a page could not be had (after retries): its status, if there was a response.
struct Failure {
    status: Option<StatusCode>,
    reason: String,
}

enum ListOutcome {
    Links {
        final_url: Url,
        follow: Vec<Url>,
        articles: Vec<Url>,
    },
    Disallowed,
    Error,
    OverBudget,
}

enum ArticleOutcome {
    Article {
        key: String,
        link_key: String,
        fetched_at: String,
        record: Map<String, Value>,
    },
    /// The canonical URL was committed by an earlier run (the link URL was not).
    Seen {
        link_key: String,
    },
    Skipped,
    Disallowed,
    Error,
    OverBudget,
}

struct Crawler<'a> {
    ctx: &'a TaskContext,
    o: &'a Opts,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
    pages: AtomicU64,
}

impl Crawler<'_> {
    fn host(&self, url: &Url) -> Arc<Host> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts
            .entry(host_key(url))
            .or_insert_with(|| {
                Arc::new(Host {
                    slots: Semaphore::new(self.o.per_host_concurrency),
                    pace: Mutex::new(Pace {
                        last_start: None,
                        delay: self.o.per_host_delay,
                    }),
                    robots: tokio::sync::OnceCell::new(),
                })
            })
            .clone()
    }

    /// Reserves one of `max_pages`.
    fn take_page(&self) -> bool {
        self.pages
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.o.max_pages).then_some(n + 1)
            })
            .is_ok()
    }

    /// GET `url` with retries on 429, 408, 5xx and network errors, each attempt waiting
    /// for a free slot of its host and its turn after the host's delay.
    async fn fetch(
        &self,
        url: &Url,
        max_attempts: u32,
    ) -> Result<Result<Page, Failure>, TaskError> {
        let host = self.host(url);
        let policy = &self.o.policy;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let permit = tokio::select! {
                p = host.slots.acquire() => p.map_err(|e| TaskError::Failed(format!("host slots: {e}")))?,
                _ = self.ctx.cancel.cancelled() => return Err(TaskError::Cancelled),
            };
            let start = {
                let mut p = host.pace.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let start = match p.last_start {
                    Some(last) => now.max(last + p.delay),
                    None => now,
                };
                p.last_start = Some(start);
                start
            };
            sleep_or_cancel(self.ctx, start.saturating_duration_since(Instant::now())).await?;
            let started = Instant::now();
            let req = client()
                .get(url.clone())
                .timeout(policy.timeout)
                .header(USER_AGENT, self.o.user_agent.clone());
            let result = tokio::select! {
                r = async {
                    let resp = req.send().await?;
                    let status = resp.status();
                    let final_url = resp.url().clone();
                    let header = |h: HeaderName| resp.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
                    let content_type = header(CONTENT_TYPE);
                    let retry_after = header(RETRY_AFTER).as_deref().and_then(parse_retry_after);
                    let body = resp.bytes().await?;
                    Ok::<_, reqwest::Error>((status, final_url, content_type, retry_after, body.to_vec()))
                } => r,
                _ = self.ctx.cancel.cancelled() => return Err(TaskError::Cancelled),
            };
            drop(permit);
            let last = attempt >= max_attempts;
            let (delay, reason) = match result {
                Ok((status, final_url, content_type, _, body)) if status.is_success() => {
                    self.ctx.log.info(&format!(
                        "GET {url} → {} ({} bytes, {} ms)",
                        status.as_u16(),
                        body.len(),
                        started.elapsed().as_millis()
                    ));
                    return Ok(Ok(Page {
                        url: final_url,
                        content_type,
                        body,
                    }));
                }
                Ok((status, _, _, retry_after, _))
                    if status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::REQUEST_TIMEOUT
                        || status.is_server_error() =>
                {
                    let fail = |reason: String| {
                        Ok(Err(Failure {
                            status: Some(status),
                            reason,
                        }))
                    };
                    if last {
                        return fail(format!(
                            "HTTP {status} (gave up after {attempt} attempt(s))"
                        ));
                    }
                    match retry_after {
                        Some(wait) if wait > policy.max_retry_wait => {
                            return fail(format!(
                                "HTTP {status}: the server asks to wait {} (Retry-After), longer than max_retry_wait",
                                humantime::format_duration(wait)
                            ))
                        }
                        Some(wait) => (wait, format!("HTTP {status}; Retry-After")),
                        None => (policy.backoff(attempt), format!("HTTP {status}")),
                    }
                }
                Ok((status, ..)) => {
                    return Ok(Err(Failure {
                        status: Some(status),
                        reason: format!("HTTP {status}"),
                    }))
                }
                Err(e) => {
                    let reason = describe_reqwest_error(&e, policy.timeout);
                    if last {
                        return Ok(Err(Failure {
                            status: None,
                            reason: format!(
                                "cannot reach {} after {attempt} attempt(s): {reason}",
                                host_key(url)
                            ),
                        }));
                    }
                    (policy.backoff(attempt), reason)
                }
            };
            self.ctx.log.warn(&format!(
                "GET {url}: attempt {attempt}/{max_attempts} failed ({reason}); retrying in {}",
                humantime::format_duration(delay)
            ));
            sleep_or_cancel(self.ctx, delay).await?;
        }
    }

    /// Fetches a page counted as read (bytes and one record in).
    async fn fetch_page(&self, url: &Url) -> Result<Result<Page, Failure>, TaskError> {
        let r = self.fetch(url, self.o.policy.max_attempts).await?;
        if let Ok(p) = &r {
            self.ctx.metrics.read(1, p.body.len() as u64);
        }
        Ok(r)
    }

    /// robots.txt of `url`'s host, fetched once per run.
    async fn robots(&self, url: &Url) -> Result<Arc<Robots>, TaskError> {
        let host = self.host(url);
        host.robots
            .get_or_try_init(|| async {
                let mut robots_url = url.clone();
                robots_url.set_path("/robots.txt");
                robots_url.set_query(None);
                robots_url.set_fragment(None);
                let robots = match self
                    .fetch(&robots_url, self.o.policy.max_attempts.min(2))
                    .await?
                {
                    Ok(page) => {
                        Robots::parse(&String::from_utf8_lossy(&page.body), &self.o.ua_token)
                    }
                    Err(f) if f.status.is_some_and(|s| s.is_client_error()) => {
                        self.ctx.log.info(&format!(
                            "{robots_url}: {}; crawling {} without restrictions",
                            f.reason,
                            host_key(url)
                        ));
                        Robots::default()
                    }
                    Err(f) => {
                        self.ctx.log.warn(&format!(
                            "{robots_url}: {}; treating {} as allowing everything",
                            f.reason,
                            host_key(url)
                        ));
                        Robots::default()
                    }
                };
                if let Some(d) = robots.crawl_delay {
                    let mut p = host.pace.lock().unwrap_or_else(|p| p.into_inner());
                    if d > p.delay {
                        self.ctx.log.info(&format!(
                            "{}: robots.txt Crawl-delay {} applies",
                            host_key(url),
                            humantime::format_duration(d)
                        ));
                        p.delay = d;
                    }
                }
                Ok::<_, TaskError>(Arc::new(robots))
            })
            .await
            .cloned()
    }

    async fn allowed(&self, url: &Url) -> Result<bool, TaskError> {
        if !self.o.robots {
            return Ok(true);
        }
        let ok = self.robots(url).await?.allowed(url);
        if !ok {
            self.ctx
                .log
                .info(&format!("robots.txt disallows {url}: not fetched"));
        }
        Ok(ok)
    }

    async fn list_page(
        &self,
        url: &Url,
        depth: u64,
        is_start: bool,
    ) -> Result<ListOutcome, TaskError> {
        if !self.allowed(url).await? {
            if is_start {
                self.ctx.log.warn(&format!(
                    "start URL {url} is disallowed by robots.txt for our user agent"
                ));
            }
            return Ok(ListOutcome::Disallowed);
        }
        if !self.take_page() {
            return Ok(ListOutcome::OverBudget);
        }
        let page = match self.fetch_page(url).await? {
            Ok(p) => p,
            Err(f) if is_start => {
                return Err(TaskError::Failed(format!(
                    "cannot fetch start URL {url}: {}",
                    f.reason
                )))
            }
            Err(f) => {
                self.ctx
                    .log
                    .warn(&format!("list page {url}: {}; skipped", f.reason));
                return Ok(ListOutcome::Error);
            }
        };
        let text = decode(&page.body, page.content_type.as_deref(), self.o.encoding);
        let (follow, articles) = parse_list(&text, &page.url, self.o, depth < self.o.max_depth);
        Ok(ListOutcome::Links {
            final_url: page.url,
            follow,
            articles,
        })
    }

    async fn article(&self, url: &Url, link_key: &str) -> Result<ArticleOutcome, TaskError> {
        if !self.allowed(url).await? {
            return Ok(ArticleOutcome::Disallowed);
        }
        if !self.take_page() {
            return Ok(ArticleOutcome::OverBudget);
        }
        let fetched_at = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
        let page = match self.fetch_page(url).await? {
            Ok(p) => p,
            Err(f) => {
                self.ctx
                    .log
                    .warn(&format!("article {url}: {}; skipped", f.reason));
                return Ok(ArticleOutcome::Error);
            }
        };
        let text = decode(&page.body, page.content_type.as_deref(), self.o.encoding);
        let parsed = parse_article(&text, &page.url, &self.o.fields);
        let key = dedup_key(&parsed.canonical);
        if self.o.dedup
            && key != link_key
            && !self
                .ctx
                .state
                .get_many(std::slice::from_ref(&key))
                .await?
                .is_empty()
        {
            return Ok(ArticleOutcome::Seen {
                link_key: link_key.to_string(),
            });
        }
        match parsed.fields {
            Err((field, why)) => {
                self.ctx.log.warn(&format!(
                    "article {url}: required field `{field}` missing ({why}); skipped"
                ));
                Ok(ArticleOutcome::Skipped)
            }
            Ok(fields) => {
                let mut record = Map::with_capacity(fields.len() + 2);
                record.insert("url".into(), Value::String(parsed.canonical.to_string()));
                record.extend(fields);
                record.insert("fetched_at".into(), Value::String(fetched_at.clone()));
                Ok(ArticleOutcome::Article {
                    key,
                    link_key: link_key.to_string(),
                    fetched_at,
                    record,
                })
            }
        }
    }
}

#[derive(Default)]
struct Summary {
    list_pages: u64,
    article_pages: u64,
    seen: u64,
    duplicates: u64,
    disallowed: u64,
    skipped: u64,
    errors: u64,
    offsite: u64,
    over_budget: bool,
    capped: bool,
}

#[async_trait::async_trait]
impl TaskKind for Crawl {
    fn name(&self) -> &'static str {
        "crawl"
    }

    fn keys(&self) -> KindKeys {
        KindKeys {
            allowed: &[
                "start_urls",
                "follow",
                "max_depth",
                "article_links",
                "fields",
                "same_host",
                "timezone",
                "user_agent",
                "concurrency",
                "per_host_concurrency",
                "per_host_delay",
                "max_pages",
                "max_articles",
                "encoding",
                "robots",
                "dedup",
                "timeout",
                "max_attempts",
                "retry_delay",
                "max_retry_wait",
            ],
            required: &["start_urls", "article_links", "fields"],
        }
    }

    async fn run(&self, ctx: &TaskContext, args: Map<String, Value>) -> Result<Value, TaskError> {
        let o = Opts::from_args(&args)?;
        let c = Crawler {
            ctx,
            o: &o,
            hosts: Mutex::new(HashMap::new()),
            pages: AtomicU64::new(0),
        };
        let mut sum = Summary::default();
        let mut hosts: HashSet<String> = o.start_urls.iter().map(host_key).collect();
        let on_site =
            |u: &Url, hosts: &HashSet<String>| !o.same_host || hosts.contains(&host_key(u));

        // List pages, breadth first.
        let mut visited: HashSet<Url> = o.start_urls.iter().cloned().collect();
        let mut level: Vec<Url> = o.start_urls.clone();
        let mut article_urls: Vec<Url> = Vec::new();
        let mut article_set: HashSet<Url> = HashSet::new();
        for depth in 0..=o.max_depth {
            if level.is_empty() {
                break;
            }
            let order = interleave(level.into_iter().enumerate().collect(), |(_, u)| {
                host_key(u)
            });
            let mut results: Vec<(usize, Url, ListOutcome)> = Vec::with_capacity(order.len());
            let mut stream = std::pin::pin!(futures::stream::iter(order)
                .map(|(i, u)| {
                    let c = &c;
                    async move {
                        let r = c.list_page(&u, depth, depth == 0).await;
                        r.map(|out| (i, u, out))
                    }
                })
                .buffered(o.concurrency));
            while let Some(r) = stream.next().await {
                results.push(r?);
            }
            results.sort_by_key(|(i, ..)| *i);
            let mut next = Vec::new();
            for (_, _, out) in results {
                match out {
                    ListOutcome::Links {
                        final_url,
                        follow,
                        articles,
                    } => {
                        sum.list_pages += 1;
                        if depth == 0 {
                            hosts.insert(host_key(&final_url));
                        }
                        for a in articles {
                            if !on_site(&a, &hosts) {
                                sum.offsite += 1;
                            } else if article_set.insert(a.clone()) {
                                article_urls.push(a);
                            }
                        }
                        for f in follow {
                            if !on_site(&f, &hosts) {
                                sum.offsite += 1;
                            } else if visited.insert(f.clone()) {
                                next.push(f);
                            }
                        }
                    }
                    ListOutcome::Disallowed => sum.disallowed += 1,
                    ListOutcome::Error => sum.errors += 1,
                    ListOutcome::OverBudget => sum.over_budget = true,
                }
            }
            level = next;
        }

        // Articles not committed by earlier runs.
        let mut candidates: Vec<(usize, Url, String)> = article_urls
            .into_iter()
            .enumerate()
            .map(|(i, u)| {
                let k = dedup_key(&u);
                (i, u, k)
            })
            .collect();
        if o.dedup {
            let keys: Vec<String> = candidates.iter().map(|(_, _, k)| k.clone()).collect();
            let mut committed = HashSet::new();
            for chunk in keys.chunks(STATE_CHUNK) {
                committed.extend(ctx.state.get_many(chunk).await?.into_keys());
            }
            let before = candidates.len();
            candidates.retain(|(_, _, k)| !committed.contains(k));
            sum.seen += (before - candidates.len()) as u64;
        }
        let total = candidates.len();
        let order = interleave(candidates, |(_, u, _)| host_key(u));
        let mut emitted: HashSet<String> = HashSet::new();
        let mut records: Vec<(usize, Value)> = Vec::new();
        let mut done = 0usize;
        {
            let mut stream = std::pin::pin!(futures::stream::iter(order)
                .map(|(i, u, k)| {
                    let c = &c;
                    async move { c.article(&u, &k).await.map(|out| (i, out)) }
                })
                .buffered(o.concurrency));
            while let Some(r) = stream.next().await {
                let (i, out) = r?;
                done += 1;
                match out {
                    ArticleOutcome::Article {
                        key,
                        link_key,
                        fetched_at,
                        record,
                    } => {
                        sum.article_pages += 1;
                        if o.dedup && link_key != key {
                            ctx.state.propose(link_key, fetched_at.clone());
                        }
                        if !emitted.insert(key.clone()) {
                            sum.duplicates += 1;
                            continue;
                        }
                        if o.dedup {
                            ctx.state.propose(key, fetched_at);
                        }
                        records.push((i, Value::Object(record)));
                        if o.max_articles.is_some_and(|m| records.len() as u64 >= m) {
                            sum.capped = done < total;
                            break;
                        }
                    }
                    ArticleOutcome::Seen { link_key } => {
                        sum.article_pages += 1;
                        sum.seen += 1;
                        ctx.state.propose(
                            link_key,
                            Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
                        );
                    }
                    ArticleOutcome::Skipped => {
                        sum.article_pages += 1;
                        sum.skipped += 1;
                    }
                    ArticleOutcome::Disallowed => sum.disallowed += 1,
                    ArticleOutcome::Error => sum.errors += 1,
                    ArticleOutcome::OverBudget => sum.over_budget = true,
                }
            }
        }
        records.sort_by_key(|(i, _)| *i);
        let records: Vec<Value> = records.into_iter().map(|(_, r)| r).collect();
        ctx.metrics.wrote(records.len() as u64, 0);

        if sum.over_budget {
            ctx.log.warn(&format!(
                "stopped fetching at max_pages = {}; pages were left out",
                o.max_pages
            ));
        }
        if sum.capped {
            ctx.log.info(&format!(
                "stopped at max_articles = {}; the remaining new articles come in the next run",
                o.max_articles.unwrap_or(0)
            ));
        }
        let msg = format!(
            "crawl: {} page(s) fetched ({} list, {} article), {} article(s) emitted, {} already seen, {} duplicate(s), {} disallowed by robots.txt, {} skipped (required field missing), {} error(s), {} off-site link(s) ignored",
            sum.list_pages + sum.article_pages,
            sum.list_pages,
            sum.article_pages,
            records.len(),
            sum.seen,
            sum.duplicates,
            sum.disallowed,
            sum.skipped,
            sum.errors,
            sum.offsite
        );
        if sum.errors > 0 || sum.skipped > 0 {
            ctx.log.warn(&msg);
        } else {
            ctx.log.info(&msg);
        }
        Ok(Value::Array(records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn robots_groups_longest_match_and_wildcards() {
        let txt = "\u{feff}# news site\nUser-agent: *\nDisallow: /private/\nAllow: /private/open$\nDisallow: /*.pdf$\nDisallow: /search?\nCrawl-delay: 2\n\nUser-agent: BadBot\nUser-agent: sluice/2.0\nDisallow: /news/\nAllow: /news/ok\n\nSitemap: https://x/sitemap.xml\n";
        let any = Robots::parse(txt, "otherbot");
        assert!(!any.allowed(&u("http://h/private/a.html")));
        assert!(any.allowed(&u("http://h/private/open")));
        assert!(!any.allowed(&u("http://h/private/open/more")));
        assert!(!any.allowed(&u("http://h/files/report.pdf")));
        assert!(any.allowed(&u("http://h/files/report.pdf?x=1")));
        assert!(!any.allowed(&u("http://h/search?q=1")));
        assert!(any.allowed(&u("http://h/search")));
        assert!(any.allowed(&u("http://h/news/1")));
        assert_eq!(any.crawl_delay, Some(Duration::from_secs(2)));
        // Our own group (token match, case-insensitive, version ignored) replaces `*`.
        let mine = Robots::parse(txt, "sluice");
        assert!(!mine.allowed(&u("http://h/news/1")));
        assert!(mine.allowed(&u("http://h/news/ok/2")));
        assert!(mine.allowed(&u("http://h/private/a.html")));
        assert_eq!(mine.crawl_delay, None);
        assert!(mine.allowed(&u("http://h/robots.txt")));
    }

    #[test]
    fn robots_ties_favour_allow_and_paths_compare_encoded() {
        let r = Robots::parse(
            "User-agent: *\nDisallow: /page\nAllow: /page\nDisallow: /뉴스/\nDisallow:\n",
            "x",
        );
        assert!(r.allowed(&u("http://h/page")));
        assert!(!r.allowed(&u("http://h/%eb%89%b4%ec%8a%a4/1")));
        assert!(!r.allowed(&u("http://h/뉴스/2")));
        assert!(r.allowed(&u("http://h/other")));
        assert!(Robots::parse("Disallow: /\n", "x").allowed(&u("http://h/a")));
        assert!(Robots::parse("", "x").allowed(&u("http://h/a")));
    }

    #[test]
    fn wildcard_patterns() {
        assert!(pattern_matches("/a*b*c", "/axxbyyc"));
        assert!(pattern_matches("/a*b*c$", "/abcbc"));
        assert!(!pattern_matches("/a*b*c$", "/abcbcd"));
        assert!(pattern_matches("*", "/anything"));
        assert!(pattern_matches("/*$", "/"));
        assert!(!pattern_matches("/a*bc$", "/ab"));
        assert!(!pattern_matches("/b", "/ab"));
    }

    #[test]
    fn urls_are_normalized_for_dedup() {
        let n = normalize(u("http://h/a?id=3&utm_source=x&UTM_medium=y&fbclid=z#c"));
        assert_eq!(n.as_str(), "http://h/a?id=3");
        assert_eq!(
            normalize(u("http://h/a?utm_source=x")).as_str(),
            "http://h/a"
        );
        assert_eq!(normalize(u("http://h/a?")).as_str(), "http://h/a");
        let long = u(&format!("http://h/{}", "x".repeat(300)));
        let k = dedup_key(&long);
        assert!(k.starts_with("sha256:") && k.len() == 7 + 64, "{k}");
        assert_eq!(dedup_key(&u("http://h/a")), "http://h/a");
        assert_eq!(host_key(&u("https://h/a")), "h:443");
    }

    #[test]
    fn charsets_from_header_meta_or_default() {
        let (euc, _, _) = encoding_rs::EUC_KR.encode("한국어 기사");
        let body = [b"<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=euc-kr\"></head><body>".as_slice(), &euc].concat();
        assert!(decode(&body, Some("text/html"), None).contains("한국어 기사"));
        assert!(decode(&euc, Some("text/html; charset=\"EUC-KR\""), None).contains("한국어 기사"));
        let meta = [b"<meta charset=EUC-KR>".as_slice(), &euc].concat();
        assert!(decode(&meta, None, None).contains("한국어 기사"));
        assert!(!decode(&euc, None, None).contains("한국어 기사"));
        assert!(decode(&euc, None, Some(encoding_rs::EUC_KR)).contains("한국어 기사"));
        assert_eq!(decode("é".as_bytes(), None, None), "é");
    }

    #[test]
    fn dates_in_a_time_zone() {
        let seoul: Tz = "Asia/Seoul".parse().expect("tz");
        let f = DateFormat::Strftime("%Y.%m.%d %H:%M".into());
        assert_eq!(
            parse_date("2024.05.03 14:22", &f, seoul).as_deref(),
            Some("2024-05-03T14:22:00+09:00")
        );
        assert_eq!(
            parse_date("2024.05.03 14:22", &f, Tz::UTC).as_deref(),
            Some("2024-05-03T14:22:00Z")
        );
        let d = DateFormat::Strftime("%Y-%m-%d".into());
        assert_eq!(
            parse_date("2024-05-03", &d, seoul).as_deref(),
            Some("2024-05-03T00:00:00+09:00")
        );
        assert_eq!(
            parse_date("2024-05-03T14:22:00+09:00", &DateFormat::Rfc3339, Tz::UTC).as_deref(),
            Some("2024-05-03T14:22:00+09:00")
        );
        assert_eq!(parse_date("어제", &f, seoul), None);
        assert!(parse_date_format("k", "%Y-%Q").is_err());
    }

    #[test]
    fn interleaving_is_round_robin_by_host() {
        let v = vec!["a1", "a2", "a3", "b1", "c1", "b2"];
        let out = interleave(v, |s| s[..1].to_string());
        assert_eq!(out, vec!["a1", "b1", "c1", "a2", "b2", "a3"]);
    }
}

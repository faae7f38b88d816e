//! Loading and validating DAG files (TOML).
//!
//! Validation never stops at the first problem: every diagnostic in a file is
//! collected, each pointing at the offending key or value.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use toml::de::{DeString, DeTable, DeValue};
use toml::Spanned;

use crate::model::{Dag, RetryBackoff, RetryPolicy, Schedule, TaskDef, TriggerRule, DEFAULT_POOL};
use crate::template::{Templates, CHECKPOINT_RESULT, CONTEXT_NAMES, MAPPED_ITEM, RECORD};
use crate::timetable::{cron_fires_within_10y, parse_cron, preset};
use crate::util::{fnv1a64_hex, suggestion, LineIndex};

/// The keys a task kind accepts besides the common task keys.
pub struct KindKeys {
    pub allowed: &'static [&'static str],
    pub required: &'static [&'static str],
}

/// Supplied by the tasks crate: which kinds exist and which keys they take.
pub trait KindRegistry {
    fn kind_keys(&self, kind: &str) -> Option<KindKeys>;
    fn kind_names(&self) -> Vec<&'static str>;
    /// Keys of `kind` the kind renders once per record, with `record` in their
    /// templates (an Elasticsearch document id, a Kafka key).
    fn record_template_keys(&self, _kind: &str) -> &'static [&'static str] {
        &[]
    }
}

/// One problem in a DAG file. `line` and `col` are 1-based, `col` counted in chars.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub path: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path, self.line, self.col, self.message
        )
    }
}

pub struct FolderLoad {
    pub dags: Vec<Dag>,
    /// Keyed by file path.
    pub errors: BTreeMap<String, Vec<Diagnostic>>,
}

pub const TOP_KEYS: &[&str] = &["dag", "defaults", "params", "checkpoints", "tasks"];
pub const DAG_KEYS: &[&str] = &[
    "id",
    "description",
    "schedule",
    "timezone",
    "start_date",
    "end_date",
    "catchup",
    "max_active_runs",
    "max_active_tasks",
    "dagrun_timeout",
    "tags",
    "is_paused_upon_creation",
];
pub const TASK_COMMON_KEYS: &[&str] = &[
    "kind",
    "upstream",
    "trigger_rule",
    "retries",
    "retry_delay",
    "retry_backoff",
    "max_retry_delay",
    "retry_jitter",
    "timeout",
    "pool",
    "pool_slots",
    "priority_weight",
    "doc",
];
/// Keys a task may set but `[defaults]` may not.
pub const TASK_ONLY_KEYS: &[&str] = &[
    "upstream",
    "checkpoint_update",
    "map_over",
    "map_concurrency",
];

const MAX_ID_LEN: usize = 250;

type Entry<'t, 'i> = (&'t Spanned<DeString<'i>>, &'t Spanned<DeValue<'i>>);

/// Table entries in file order (toml's map is sorted by key, so order by span).
fn entries<'t, 'i>(t: &'t DeTable<'i>) -> Vec<Entry<'t, 'i>> {
    let mut v: Vec<_> = t.iter().collect();
    v.sort_by_key(|(k, _)| k.span().start);
    v
}

fn lookup<'t, 'i>(es: &[Entry<'t, 'i>], key: &str) -> Option<Entry<'t, 'i>> {
    es.iter()
        .copied()
        .find(|(k, _)| k.get_ref().as_ref() == key)
}

/// Span of a table for "missing key" errors: the header if it has one, else its key.
fn table_span(key: &Spanned<DeString<'_>>, value: &Spanned<DeValue<'_>>) -> Range<usize> {
    let s = value.span();
    if s.is_empty() {
        key.span()
    } else {
        s
    }
}

struct Ctx<'a> {
    path: String,
    idx: LineIndex<'a>,
    diags: Vec<Diagnostic>,
}

impl<'a> Ctx<'a> {
    fn new(src: &'a str, path: &Path) -> Self {
        Ctx {
            path: path.display().to_string(),
            idx: LineIndex::new(src),
            diags: Vec::new(),
        }
    }

    fn err_at(&mut self, offset: usize, message: impl Into<String>) {
        let (line, col) = self.idx.line_col(offset);
        self.diags.push(Diagnostic {
            path: self.path.clone(),
            line,
            col,
            message: message.into(),
        });
    }

    fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.err_at(span.start, message)
    }

    fn finish(mut self) -> Vec<Diagnostic> {
        self.diags.sort_by_key(|d| (d.line, d.col));
        self.diags.dedup();
        self.diags
    }

    // ---- typed value readers: each reports its own error and returns None ----

    fn string(&mut self, key: &str, v: &Spanned<DeValue<'_>>) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            other => {
                self.err(
                    v.span(),
                    format!("`{key}` must be a string, not {}", type_name(other)),
                );
                None
            }
        }
    }

    fn boolean(&mut self, key: &str, v: &Spanned<DeValue<'_>>) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.err(v.span(), format!("`{key}` must be true or false"));
                None
            }
        }
    }

    fn integer(&mut self, key: &str, v: &Spanned<DeValue<'_>>) -> Option<i64> {
        match v.get_ref() {
            DeValue::Integer(i) => match int_value(i) {
                Some(n) => Some(n),
                None => {
                    self.err(v.span(), format!("`{key}` is out of range"));
                    None
                }
            },
            _ => {
                self.err(v.span(), format!("`{key}` must be an integer"));
                None
            }
        }
    }

    fn non_negative_u32(&mut self, key: &str, v: &Spanned<DeValue<'_>>) -> Option<u32> {
        let n = match v.get_ref() {
            DeValue::Integer(i) => int_value(i),
            _ => None,
        };
        match n.and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Some(n),
            None => {
                self.err(v.span(), format!("`{key}` must be a non-negative integer"));
                None
            }
        }
    }

    fn positive_u32(&mut self, key: &str, v: &Spanned<DeValue<'_>>) -> Option<u32> {
        let n = match v.get_ref() {
            DeValue::Integer(i) => int_value(i),
            _ => None,
        };
        match n.and_then(|n| u32::try_from(n).ok()).filter(|n| *n >= 1) {
            Some(n) => Some(n),
            None => {
                self.err(
                    v.span(),
                    format!("`{key}` must be a positive integer (>= 1)"),
                );
                None
            }
        }
    }

    /// A humantime string ("30s", "1h 30m") or an integer number of seconds.
    fn duration_ms(&mut self, key: &str, v: &Spanned<DeValue<'_>>) -> Option<u64> {
        match v.get_ref() {
            DeValue::String(s) => match humantime::parse_duration(s.trim()) {
                Ok(d) => Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                Err(e) => {
                    self.err(
                        v.span(),
                        format!("invalid duration `{s}` for `{key}`: {e} (use e.g. \"30s\", \"5m\", \"1h30m\")"),
                    );
                    None
                }
            },
            DeValue::Integer(i) => {
                match int_value(i).and_then(|n| u64::try_from(n).ok()) {
                    Some(secs) => Some(secs.saturating_mul(1000)),
                    None => {
                        self.err(
                        v.span(),
                        format!("`{key}` must be a non-negative number of seconds or a duration string"),
                    );
                        None
                    }
                }
            }
            _ => {
                self.err(
                    v.span(),
                    format!("`{key}` must be a duration such as \"30s\", \"5m\" or \"1h30m\""),
                );
                None
            }
        }
    }

    /// An array of strings (a single string is accepted as a one-element list).
    fn string_list(
        &mut self,
        key: &str,
        v: &Spanned<DeValue<'_>>,
    ) -> Option<Vec<(String, Range<usize>)>> {
        match v.get_ref() {
            DeValue::String(s) => Some(vec![(s.to_string(), v.span())]),
            DeValue::Array(items) => {
                let mut out = Vec::new();
                let mut ok = true;
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(s) => out.push((s.to_string(), item.span())),
                        _ => {
                            self.err(item.span(), format!("`{key}` must contain only strings"));
                            ok = false;
                        }
                    }
                }
                ok.then_some(out)
            }
            _ => {
                self.err(v.span(), format!("`{key}` must be an array of strings"));
                None
            }
        }
    }

    fn date(&mut self, key: &str, v: &Spanned<DeValue<'_>>, tz: Tz) -> Option<DateTime<Utc>> {
        let r = match v.get_ref() {
            DeValue::Datetime(dt) => toml_datetime_to_utc(dt, tz),
            DeValue::String(s) => parse_date_str(s, tz),
            _ => Err(
                "must be a date or datetime (e.g. 2024-08-01 or 2024-08-01T00:00:00+09:00)".into(),
            ),
        };
        match r {
            Ok(d) => Some(d),
            Err(m) => {
                self.err(v.span(), format!("`{key}` {m}"));
                None
            }
        }
    }

    /// Convert a TOML value to JSON; tables keep file order.
    fn json(&mut self, v: &Spanned<DeValue<'_>>) -> serde_json::Value {
        use serde_json::Value as J;
        match v.get_ref() {
            DeValue::String(s) => J::String(s.to_string()),
            DeValue::Integer(i) => match int_value(i) {
                Some(n) => J::from(n),
                None => {
                    self.err(v.span(), "integer is out of range (64-bit signed)");
                    J::Null
                }
            },
            DeValue::Float(f) => {
                match f
                    .as_str()
                    .replace('_', "")
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                {
                    Some(n) => J::Number(n),
                    None => {
                        self.err(v.span(), "`nan` and `inf` cannot be represented in JSON");
                        J::Null
                    }
                }
            }
            DeValue::Boolean(b) => J::Bool(*b),
            DeValue::Datetime(dt) => J::String(dt.to_string()),
            DeValue::Array(items) => J::Array(items.iter().map(|x| self.json(x)).collect()),
            DeValue::Table(t) => {
                let mut m = serde_json::Map::new();
                for (k, val) in entries(t) {
                    let j = self.json(val);
                    m.insert(k.get_ref().to_string(), j);
                }
                J::Object(m)
            }
        }
    }
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn int_value(i: &toml::de::DeInteger<'_>) -> Option<i64> {
    i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
}

fn local_to_utc(naive: NaiveDateTime, tz: Tz) -> Result<DateTime<Utc>, String> {
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(d) => Ok(d.with_timezone(&Utc)),
        // Ambiguous (DST fold): take the earlier instant, as for cron fire times.
        chrono::LocalResult::Ambiguous(a, _) => Ok(a.with_timezone(&Utc)),
        chrono::LocalResult::None => Err(format!(
            "`{naive}` does not exist in {} (skipped by a DST change)",
            tz.name()
        )),
    }
}

fn toml_datetime_to_utc(dt: &toml::value::Datetime, tz: Tz) -> Result<DateTime<Utc>, String> {
    let Some(d) = dt.date else {
        return Err("must include a date, not only a time".into());
    };
    let date = NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
        .ok_or_else(|| format!("has an invalid date `{dt}`"))?;
    let time = match dt.time {
        Some(t) => NaiveTime::from_hms_nano_opt(
            u32::from(t.hour),
            u32::from(t.minute),
            u32::from(t.second).min(59),
            t.nanosecond,
        )
        .ok_or_else(|| format!("has an invalid time `{dt}`"))?,
        None => NaiveTime::MIN,
    };
    let naive = date.and_time(time);
    match dt.offset {
        Some(toml::value::Offset::Z) => Ok(naive.and_utc()),
        Some(toml::value::Offset::Custom { minutes }) => {
            Ok((naive - chrono::Duration::minutes(i64::from(minutes))).and_utc())
        }
        None => local_to_utc(naive, tz).map_err(|e| format!("is invalid: {e}")),
    }
}

fn parse_date_str(s: &str, tz: Tz) -> Result<DateTime<Utc>, String> {
    let t = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return local_to_utc(d.and_time(NaiveTime::MIN), tz)
            .map_err(|e| format!("is invalid: {e}"));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, fmt) {
            return local_to_utc(n, tz).map_err(|e| format!("is invalid: {e}"));
        }
    }
    Err(format!(
        "\"{s}\" is not a date: use RFC 3339 (2024-08-01T00:00:00Z) or YYYY-MM-DD"
    ))
}

/// `schedule` string -> Schedule (cron validity is checked here; "never fires" later).
fn parse_schedule(s: &str) -> Result<Schedule, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("`schedule` is empty; use \"none\" for a manually triggered DAG".into());
    }
    let lower = t.to_ascii_lowercase();
    if lower == "none" || lower == "@none" {
        return Ok(Schedule::None);
    }
    if lower == "@once" {
        return Ok(Schedule::Once);
    }
    if let Some(expr) = preset(&lower) {
        return Ok(Schedule::Cron { expr: expr.into() });
    }
    if let Some(rest) = lower.strip_prefix("every ") {
        let every = humantime::parse_duration(rest.trim())
            .map_err(|e| format!("invalid interval `{}` in `schedule`: {e}", rest.trim()))?;
        let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        if every_ms == 0 {
            return Err("`schedule` interval must be greater than zero".into());
        }
        return Ok(Schedule::Every { every_ms });
    }
    if t.starts_with('@') {
        const PRESETS: &[&str] = &[
            "@hourly",
            "@daily",
            "@midnight",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
            "@once",
            "@none",
        ];
        return Err(format!(
            "unknown schedule preset `{t}`{}",
            suggestion(t, PRESETS.iter().copied())
        ));
    }
    match parse_cron(t) {
        Ok(_) => Ok(Schedule::Cron {
            expr: t.split_whitespace().collect::<Vec<_>>().join(" "),
        }),
        Err(e) => Err(format!("invalid cron expression `{t}`: {e}")),
    }
}

/// A name templates read as an attribute (`checkpoint.NAME`): an identifier.
fn check_template_name(what: &str, name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} `{name}` must start with a letter or `_` and hold only letters, digits and `_` (templates read it as an attribute)"
        ))
    }
}

fn check_id(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if id.chars().count() > MAX_ID_LEN {
        return Err(format!(
            "{what} `{id}` is longer than {MAX_ID_LEN} characters"
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "{what} `{id}` contains `{c}`; only letters, digits, `_`, `.` and `-` are allowed"
        ));
    }
    Ok(())
}

/// A string value that may hold a template, with enough to map template offsets
/// back to the file.
#[derive(Clone)]
struct TemplateSite {
    src: String,
    /// File offset of the value (its opening quote).
    value_start: usize,
    /// File offset of the string's first content byte, when the raw text equals the
    /// decoded string (no escapes), so offsets inside the template map exactly.
    content_start: Option<usize>,
    from_defaults: bool,
    scope: SiteScope,
}

/// Which part of a task a template belongs to: it decides the extra names it may read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SiteScope {
    /// The kind's arguments.
    Args,
    /// `map_over`, rendered before the task is mapped (so no `item`).
    MapOver,
    /// `checkpoint_update`, rendered after the try with `result`.
    CheckpointUpdate,
    /// A key the kind renders per record (`record`).
    Record,
}

impl TemplateSite {
    fn new(file: &str, span: Range<usize>, decoded: &str, from_defaults: bool) -> Self {
        let raw = file.get(span.clone()).unwrap_or("");
        let delim = if raw.starts_with("\"\"\"") || raw.starts_with("'''") {
            3
        } else {
            1
        };
        let mut start = span.start + delim;
        if delim == 3 {
            // TOML trims a newline right after the opening delimiter.
            if file.get(start..).is_some_and(|r| r.starts_with("\r\n")) {
                start += 2;
            } else if file.get(start..).is_some_and(|r| r.starts_with('\n')) {
                start += 1;
            }
        }
        let end = span.end.saturating_sub(delim);
        let content_start =
            (start <= end && file.get(start..end) == Some(decoded)).then_some(start);
        TemplateSite {
            src: decoded.to_string(),
            value_start: span.start,
            content_start,
            from_defaults,
            scope: SiteScope::Args,
        }
    }

    fn file_offset(&self, offset_in_template: usize) -> usize {
        match self.content_start {
            Some(s) => s + offset_in_template,
            None => self.value_start,
        }
    }

    /// Best-effort offset of a name (word-bounded) inside the template.
    fn offset_of(&self, needle: &str) -> usize {
        let bytes = self.src.as_bytes();
        let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let mut from = 0;
        while let Some(i) = self.src[from..].find(needle) {
            let at = from + i;
            let before_ok = at == 0 || !is_ident(bytes[at - 1]);
            let end = at + needle.len();
            let after_ok = end >= bytes.len() || !is_ident(bytes[end]);
            if before_ok && after_ok {
                return self.file_offset(at);
            }
            from = at + 1;
        }
        self.file_offset(0)
    }
}

fn collect_strings(
    file: &str,
    v: &Spanned<DeValue<'_>>,
    from_defaults: bool,
    out: &mut Vec<TemplateSite>,
) {
    match v.get_ref() {
        DeValue::String(s) => out.push(TemplateSite::new(file, v.span(), s, from_defaults)),
        DeValue::Array(items) => {
            for item in items.iter() {
                collect_strings(file, item, from_defaults, out);
            }
        }
        DeValue::Table(t) => {
            for (_, val) in entries(t) {
                collect_strings(file, val, from_defaults, out);
            }
        }
        _ => {}
    }
}

/// Common task settings, each optional so `[defaults]` and the task can be layered.
#[derive(Clone, Default)]
struct Common {
    kind: Option<(String, Range<usize>)>,
    trigger_rule: Option<TriggerRule>,
    retries: Option<u32>,
    retry_delay_ms: Option<u64>,
    retry_backoff: Option<RetryBackoff>,
    max_retry_delay_ms: Option<u64>,
    retry_jitter: Option<bool>,
    timeout_ms: Option<u64>,
    pool: Option<String>,
    pool_slots: Option<u32>,
    priority_weight: Option<i64>,
    doc: Option<String>,
}

impl Common {
    /// `self` wins over `base`.
    fn over(self, base: &Common) -> Common {
        Common {
            kind: self.kind.or_else(|| base.kind.clone()),
            trigger_rule: self.trigger_rule.or(base.trigger_rule),
            retries: self.retries.or(base.retries),
            retry_delay_ms: self.retry_delay_ms.or(base.retry_delay_ms),
            retry_backoff: self.retry_backoff.or(base.retry_backoff),
            max_retry_delay_ms: self.max_retry_delay_ms.or(base.max_retry_delay_ms),
            retry_jitter: self.retry_jitter.or(base.retry_jitter),
            timeout_ms: self.timeout_ms.or(base.timeout_ms),
            pool: self.pool.or_else(|| base.pool.clone()),
            pool_slots: self.pool_slots.or(base.pool_slots),
            priority_weight: self.priority_weight.or(base.priority_weight),
            doc: self.doc.or_else(|| base.doc.clone()),
        }
    }

    /// Parse one common key (not `upstream`) into `self`.
    fn set(&mut self, ctx: &mut Ctx<'_>, key: &str, v: &Spanned<DeValue<'_>>) {
        match key {
            "kind" => {
                if let Some(s) = ctx.string(key, v) {
                    self.kind = Some((s, v.span()));
                }
            }
            "trigger_rule" => {
                if let Some(s) = ctx.string(key, v) {
                    match TriggerRule::parse(&s) {
                        Some(r) => self.trigger_rule = Some(r),
                        None => {
                            let names = TriggerRule::ALL.map(|r| r.as_str());
                            let hint = match suggestion(&s, names) {
                                h if h.is_empty() => {
                                    format!("; expected one of {}", names.join(", "))
                                }
                                h => h,
                            };
                            ctx.err(v.span(), format!("unknown trigger rule `{s}`{hint}"));
                        }
                    }
                }
            }
            "retries" => self.retries = ctx.non_negative_u32(key, v),
            "retry_delay" => self.retry_delay_ms = ctx.duration_ms(key, v),
            "retry_backoff" => match v.get_ref() {
                DeValue::String(s) if s == "fixed" => {
                    self.retry_backoff = Some(RetryBackoff::Fixed)
                }
                DeValue::String(s) if s == "exponential" => {
                    self.retry_backoff = Some(RetryBackoff::Exponential)
                }
                _ => ctx.err(
                    v.span(),
                    "`retry_backoff` must be \"fixed\" or \"exponential\"",
                ),
            },
            "max_retry_delay" => self.max_retry_delay_ms = ctx.duration_ms(key, v),
            "retry_jitter" => self.retry_jitter = ctx.boolean(key, v),
            "timeout" => {
                self.timeout_ms = ctx.duration_ms(key, v);
                if self.timeout_ms == Some(0) {
                    ctx.err(v.span(), "`timeout` must be greater than zero");
                }
            }
            "pool" => {
                if let Some(s) = ctx.string(key, v) {
                    if s.trim().is_empty() {
                        ctx.err(v.span(), "`pool` must not be empty");
                    } else {
                        self.pool = Some(s);
                    }
                }
            }
            "pool_slots" => self.pool_slots = ctx.positive_u32(key, v),
            "priority_weight" => self.priority_weight = ctx.integer(key, v),
            "doc" => self.doc = ctx.string(key, v),
            _ => {}
        }
    }
}

/// A task as read from the file, before the graph is known.
struct RawTask {
    id: String,
    id_span: Range<usize>,
    common: Common,
    upstream: Vec<(String, Range<usize>)>,
    args: serde_json::Map<String, serde_json::Value>,
    templates: Vec<TemplateSite>,
    checkpoint_update: IndexMap<String, String>,
    map_over: Option<serde_json::Value>,
    map_concurrency: Option<u32>,
}

/// A kind-specific key set in `[defaults]`.
struct DefaultArg {
    key: String,
    value: serde_json::Value,
    templates: Vec<TemplateSite>,
}

/// Parse and validate one DAG file's contents. `path` is used for diagnostics and `fileloc`.
pub fn parse_dag(
    src: &str,
    path: &Path,
    registry: &dyn KindRegistry,
) -> Result<Dag, Vec<Diagnostic>> {
    let mut ctx = Ctx::new(src, path);
    let (root, syntax_errors) = DeTable::parse_recoverable(src);
    if !syntax_errors.is_empty() {
        // Recovery output after a syntax error is unreliable; report only these.
        for e in syntax_errors {
            let at = e.span().map(|s| s.start).unwrap_or(0);
            ctx.err_at(at, format!("TOML syntax error: {}", e.message().trim_end()));
        }
        return Err(ctx.finish());
    }
    let root = root.get_ref();
    let templates = Templates::new();
    let globals = templates.global_names();

    // ---- top level ----
    let top = entries(root);
    for (k, v) in &top {
        let key = k.get_ref().as_ref();
        if !TOP_KEYS.contains(&key) {
            ctx.err(
                k.span(),
                format!(
                    "unknown key `{key}` at top level (expected [dag], [defaults], [params], [checkpoints], [tasks]){}",
                    suggestion(key, TOP_KEYS.iter().copied())
                ),
            );
        } else if !matches!(v.get_ref(), DeValue::Table(_)) {
            ctx.err(v.span(), format!("`{key}` must be a table ([{key}])"));
        }
    }
    let table_of = |name: &str| -> Option<(Entry<'_, '_>, &DeTable<'_>)> {
        let e = lookup(&top, name)?;
        match e.1.get_ref() {
            DeValue::Table(t) => Some((e, t)),
            _ => None,
        }
    };

    // ---- [dag] ----
    let mut dag_id = None;
    let mut description = None;
    let mut schedule = Schedule::None;
    let mut schedule_span = None;
    let mut timezone = Tz::UTC;
    let mut start_date = None;
    let mut end_date = None;
    let mut end_span = None;
    let mut catchup = false;
    let mut max_active_runs = 16;
    let mut max_active_tasks = 16;
    let mut dagrun_timeout_ms = None;
    let mut tags = Vec::new();
    let mut is_paused_upon_creation = None;

    match table_of("dag") {
        None => {
            if lookup(&top, "dag").is_none() {
                ctx.err_at(0, "missing [dag] table (it needs at least `id`)");
            }
        }
        Some(((dk, dv), dag)) => {
            let es = entries(dag);
            for (k, _) in &es {
                let key = k.get_ref().as_ref();
                if !DAG_KEYS.contains(&key) {
                    ctx.err(
                        k.span(),
                        format!(
                            "unknown key `{key}` in [dag]{}",
                            suggestion(key, DAG_KEYS.iter().copied())
                        ),
                    );
                }
            }
            // The timezone first: local dates are read in it.
            if let Some((_, v)) = lookup(&es, "timezone") {
                if let Some(name) = ctx.string("timezone", v) {
                    match name.parse::<Tz>() {
                        Ok(tz) => timezone = tz,
                        Err(_) => {
                            let names = chrono_tz::TZ_VARIANTS.iter().map(|t| t.name());
                            ctx.err(
                                v.span(),
                                format!("unknown timezone `{name}`{}", suggestion(&name, names)),
                            );
                        }
                    }
                }
            }
            match lookup(&es, "id") {
                Some((_, v)) => {
                    if let Some(id) = ctx.string("id", v) {
                        match check_id("dag id", &id) {
                            Ok(()) => dag_id = Some(id),
                            Err(m) => ctx.err(v.span(), m),
                        }
                    }
                }
                None => ctx.err(table_span(dk, dv), "missing required key `id` in [dag]"),
            }
            if let Some((_, v)) = lookup(&es, "description") {
                description = ctx.string("description", v);
            }
            if let Some((_, v)) = lookup(&es, "start_date") {
                start_date = ctx.date("start_date", v, timezone);
            }
            if let Some((_, v)) = lookup(&es, "end_date") {
                end_date = ctx.date("end_date", v, timezone);
                end_span = Some(v.span());
            }
            if let Some((_, v)) = lookup(&es, "schedule") {
                schedule_span = Some(v.span());
                if let Some(s) = ctx.string("schedule", v) {
                    match parse_schedule(&s) {
                        Ok(sch) => {
                            if let Schedule::Cron { expr } = &sch {
                                let from = start_date.unwrap_or_else(Utc::now);
                                if !cron_fires_within_10y(expr, timezone, from) {
                                    ctx.err(
                                        v.span(),
                                        format!(
                                            "cron expression `{expr}` never fires (no fire time within 10 years of {})",
                                            if start_date.is_some() { "start_date" } else { "now" }
                                        ),
                                    );
                                }
                            }
                            schedule = sch;
                        }
                        Err(m) => ctx.err(v.span(), m),
                    }
                }
            }
            if let Some((_, v)) = lookup(&es, "catchup") {
                catchup = ctx.boolean("catchup", v).unwrap_or(false);
            }
            if let Some((_, v)) = lookup(&es, "max_active_runs") {
                max_active_runs = ctx.positive_u32("max_active_runs", v).unwrap_or(16);
            }
            if let Some((_, v)) = lookup(&es, "max_active_tasks") {
                max_active_tasks = ctx.positive_u32("max_active_tasks", v).unwrap_or(16);
            }
            if let Some((_, v)) = lookup(&es, "dagrun_timeout") {
                dagrun_timeout_ms = ctx.duration_ms("dagrun_timeout", v);
                if dagrun_timeout_ms == Some(0) {
                    ctx.err(v.span(), "`dagrun_timeout` must be greater than zero");
                }
            }
            if let Some((_, v)) = lookup(&es, "tags") {
                if let Some(list) = ctx.string_list("tags", v) {
                    tags = list.into_iter().map(|(s, _)| s).collect();
                }
            }
            if let Some((_, v)) = lookup(&es, "is_paused_upon_creation") {
                is_paused_upon_creation = ctx.boolean("is_paused_upon_creation", v);
            }
            let start_set = lookup(&es, "start_date").is_some();
            if schedule.is_scheduled() && !start_set {
                if let Some(span) = schedule_span.clone() {
                    ctx.err(
                        span,
                        "a scheduled DAG needs `start_date` in [dag] (or use schedule = \"none\")",
                    );
                }
            }
            if let (Some(s), Some(e), Some(span)) = (start_date, end_date, end_span.clone()) {
                if e < s {
                    ctx.err(
                        span,
                        format!(
                            "`end_date` ({}) is before `start_date` ({})",
                            e.to_rfc3339(),
                            s.to_rfc3339()
                        ),
                    );
                }
            }
        }
    }

    // ---- [params] ----
    let params = match table_of("params") {
        Some(((_, v), _)) => match ctx.json(v) {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        },
        None => serde_json::Map::new(),
    };

    // ---- [checkpoints] ----
    let mut checkpoints: IndexMap<String, serde_json::Value> = IndexMap::new();
    if let Some((_, ct)) = table_of("checkpoints") {
        for (k, v) in entries(ct) {
            let name = k.get_ref().to_string();
            if let Err(m) = check_template_name("checkpoint name", &name) {
                ctx.err(k.span(), m);
                continue;
            }
            match v.get_ref() {
                DeValue::String(_)
                | DeValue::Integer(_)
                | DeValue::Float(_)
                | DeValue::Boolean(_) => {
                    let value = ctx.json(v);
                    checkpoints.insert(name, value);
                }
                other => ctx.err(
                    v.span(),
                    format!(
                        "checkpoint `{name}` must have a string, number or boolean initial value, not {}",
                        type_name(other)
                    ),
                ),
            }
        }
    }

    // ---- registry ----
    let kind_names = registry.kind_names();
    let mut all_kind_keys: Vec<&'static str> = Vec::new();
    for name in &kind_names {
        if let Some(k) = registry.kind_keys(name) {
            for key in k.allowed {
                if !all_kind_keys.contains(key) {
                    all_kind_keys.push(key);
                }
            }
        }
    }

    // ---- [defaults] ----
    let mut defaults = Common::default();
    let mut default_args: Vec<DefaultArg> = Vec::new();
    if let Some((_, dt)) = table_of("defaults") {
        for (k, v) in entries(dt) {
            let key = k.get_ref().as_ref();
            if TASK_ONLY_KEYS.contains(&key) {
                ctx.err(
                    k.span(),
                    format!("`{key}` cannot be set in [defaults]; set it on each task"),
                );
            } else if TASK_COMMON_KEYS.contains(&key) {
                defaults.set(&mut ctx, key, v);
            } else if all_kind_keys.contains(&key) {
                let value = ctx.json(v);
                let mut sites = Vec::new();
                collect_strings(src, v, true, &mut sites);
                // Syntax is checked once here; references are checked per task.
                for site in &sites {
                    if let Err(e) = templates.check(&site.src) {
                        ctx.err_at(site.file_offset(e.offset), e.message);
                    }
                }
                default_args.push(DefaultArg {
                    key: key.to_string(),
                    value,
                    templates: sites,
                });
            } else {
                let candidates = TASK_COMMON_KEYS.iter().chain(all_kind_keys.iter()).copied();
                ctx.err(
                    k.span(),
                    format!(
                        "unknown key `{key}` in [defaults]{}",
                        suggestion(key, candidates)
                    ),
                );
            }
        }
    }

    // ---- [tasks] ----
    let mut raw_tasks: Vec<RawTask> = Vec::new();
    if let Some((_, tt)) = table_of("tasks") {
        for (tk, tv) in entries(tt) {
            let id = tk.get_ref().to_string();
            if let Err(m) = check_id("task id", &id) {
                ctx.err(tk.span(), m);
            }
            let DeValue::Table(task) = tv.get_ref() else {
                ctx.err(
                    tv.span(),
                    format!("task `{id}` must be a table ([tasks.{id}])"),
                );
                continue;
            };
            let where_ = format!("[tasks.{id}]");
            let mut own = Common::default();
            let mut upstream = Vec::new();
            let mut extra: Vec<Entry<'_, '_>> = Vec::new();
            let mut checkpoint_update = IndexMap::new();
            let mut map_over = None;
            let mut map_concurrency = None;
            let mut special_sites = Vec::new();
            for (k, v) in entries(task) {
                let key = k.get_ref().as_ref();
                if key == "upstream" {
                    upstream = ctx.string_list("upstream", v).unwrap_or_default();
                } else if key == "checkpoint_update" {
                    let DeValue::Table(ut) = v.get_ref() else {
                        ctx.err(
                            v.span(),
                            "`checkpoint_update` must be a table of checkpoint name = template, \
                             e.g. { last_id = \"{{ result.max_id }}\" }",
                        );
                        continue;
                    };
                    for (nk, nv) in entries(ut) {
                        let name = nk.get_ref().to_string();
                        if !checkpoints.contains_key(&name) {
                            let declared = if checkpoints.is_empty() {
                                " (the DAG declares no [checkpoints])".to_string()
                            } else {
                                suggestion(&name, checkpoints.keys().map(String::as_str))
                            };
                            ctx.err(
                                nk.span(),
                                format!("`checkpoint_update` names unknown checkpoint `{name}`{declared}"),
                            );
                            continue;
                        }
                        if let Some(t) = ctx.string(&format!("checkpoint_update.{name}"), nv) {
                            let mut site = TemplateSite::new(src, nv.span(), &t, false);
                            site.scope = SiteScope::CheckpointUpdate;
                            special_sites.push(site);
                            checkpoint_update.insert(name, t);
                        }
                    }
                } else if key == "map_over" {
                    match v.get_ref() {
                        DeValue::String(_) | DeValue::Array(_) => {
                            let mut sites = Vec::new();
                            collect_strings(src, v, false, &mut sites);
                            for mut site in sites {
                                site.scope = SiteScope::MapOver;
                                special_sites.push(site);
                            }
                            map_over = Some(ctx.json(v));
                        }
                        other => ctx.err(
                            v.span(),
                            format!(
                                "`map_over` must be a list or a template that renders to one, not {}",
                                type_name(other)
                            ),
                        ),
                    }
                } else if key == "map_concurrency" {
                    map_concurrency = ctx.positive_u32(key, v).map(|n| (n, v.span()));
                } else if TASK_COMMON_KEYS.contains(&key) {
                    own.set(&mut ctx, key, v);
                } else {
                    extra.push((k, v));
                }
            }
            let common = own.over(&defaults);
            let kind_keys = match &common.kind {
                None => {
                    ctx.err(
                        tk.span(),
                        format!(
                            "task `{id}` has no `kind` (known kinds: {})",
                            kind_names.join(", ")
                        ),
                    );
                    None
                }
                Some((kind, span)) => match registry.kind_keys(kind) {
                    Some(k) => Some(k),
                    None => {
                        let hint = match suggestion(kind, kind_names.iter().copied()) {
                            h if h.is_empty() => {
                                format!(" (known kinds: {})", kind_names.join(", "))
                            }
                            h => h,
                        };
                        ctx.err(span.clone(), format!("unknown task kind `{kind}`{hint}"));
                        None
                    }
                },
            };
            let record_keys = common
                .kind
                .as_ref()
                .map(|(k, _)| registry.record_template_keys(k))
                .unwrap_or(&[]);
            let mut args = serde_json::Map::new();
            let mut sites = Vec::new();
            for (k, v) in extra {
                let key = k.get_ref().as_ref();
                if let Some(kk) = &kind_keys {
                    if !kk.allowed.contains(&key) {
                        let candidates = TASK_COMMON_KEYS
                            .iter()
                            .chain(TASK_ONLY_KEYS)
                            .chain(kk.allowed.iter())
                            .copied();
                        let kind = common.kind.as_ref().map(|(k, _)| k.as_str()).unwrap_or("");
                        ctx.err(
                            k.span(),
                            format!(
                                "unknown key `{key}` in {where_} (kind `{kind}`){}",
                                suggestion(key, candidates)
                            ),
                        );
                        continue;
                    }
                }
                // With an unknown kind, keep the keys: the kind error is the one to fix.
                let value = ctx.json(v);
                let first = sites.len();
                collect_strings(src, v, false, &mut sites);
                if record_keys.contains(&key) {
                    for site in &mut sites[first..] {
                        site.scope = SiteScope::Record;
                    }
                }
                args.insert(key.to_string(), value);
            }
            if let Some(kk) = &kind_keys {
                for d in &default_args {
                    if kk.allowed.contains(&d.key.as_str()) && !args.contains_key(&d.key) {
                        args.insert(d.key.clone(), d.value.clone());
                        let per_record = record_keys.contains(&d.key.as_str());
                        sites.extend(d.templates.iter().cloned().map(|mut site| {
                            if per_record {
                                site.scope = SiteScope::Record;
                            }
                            site
                        }));
                    }
                }
                for req in kk.required {
                    if !args.contains_key(*req) {
                        let kind = common.kind.as_ref().map(|(k, _)| k.as_str()).unwrap_or("");
                        ctx.err(
                            tk.span(),
                            format!("task `{id}` is missing required key `{req}` (kind `{kind}`)"),
                        );
                    }
                }
            }
            if let (Some((_, span)), None) = (&map_concurrency, &map_over) {
                ctx.err(
                    span.clone(),
                    "`map_concurrency` needs `map_over` (it caps the mapped instances running at once)",
                );
            }
            sites.extend(special_sites);
            // Syntax of the task's own strings (defaults were checked once above).
            for site in sites.iter().filter(|s| !s.from_defaults) {
                if let Err(e) = templates.check(&site.src) {
                    ctx.err_at(site.file_offset(e.offset), e.message);
                }
            }
            raw_tasks.push(RawTask {
                id,
                id_span: tk.span(),
                common,
                upstream,
                args,
                templates: sites,
                checkpoint_update,
                map_over,
                map_concurrency: map_concurrency.map(|(n, _)| n),
            });
        }
    }

    // ---- graph ----
    let task_ids: Vec<String> = raw_tasks.iter().map(|t| t.id.clone()).collect();
    let index: HashMap<&str, usize> = task_ids
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let n = raw_tasks.len();
    let mut ups: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut downs: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut upstream_names: Vec<Vec<String>> = vec![Vec::new(); n];
    for (i, t) in raw_tasks.iter().enumerate() {
        for (u, span) in &t.upstream {
            if *u == t.id {
                ctx.err(
                    span.clone(),
                    format!("task `{}` lists itself in `upstream`", t.id),
                );
                continue;
            }
            let Some(&j) = index.get(u.as_str()) else {
                ctx.err(
                    span.clone(),
                    format!(
                        "unknown upstream task `{u}` in task `{}`{}",
                        t.id,
                        suggestion(u, raw_tasks.iter().map(|t| t.id.as_str()))
                    ),
                );
                continue;
            };
            if ups[i].contains(&j) {
                continue; // listed twice: harmless
            }
            ups[i].push(j);
            downs[j].push(i);
            upstream_names[i].push(u.clone());
        }
    }
    for d in &mut downs {
        d.sort_unstable();
    }

    let mut graph = petgraph::graph::DiGraph::<usize, ()>::with_capacity(n, n);
    let nodes: Vec<_> = (0..n).map(|i| graph.add_node(i)).collect();
    for (i, us) in ups.iter().enumerate() {
        for &j in us {
            graph.add_edge(nodes[j], nodes[i], ());
        }
    }
    let mut has_cycle = false;
    let mut sccs: Vec<Vec<usize>> = petgraph::algo::tarjan_scc(&graph)
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|c| {
            let mut v: Vec<usize> = c.into_iter().map(|nx| graph[nx]).collect();
            v.sort_unstable();
            v
        })
        .collect();
    sccs.sort();
    for scc in sccs {
        has_cycle = true;
        let cycle = shortest_cycle(&scc, &downs);
        let names: Vec<&str> = cycle.iter().map(|&i| raw_tasks[i].id.as_str()).collect();
        let start = cycle[0];
        let pred = cycle[cycle.len() - 2];
        // Point at the upstream entry of the first task that closes the cycle.
        let span = raw_tasks[start]
            .upstream
            .iter()
            .find(|(u, _)| *u == raw_tasks[pred].id)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| raw_tasks[start].id_span.clone());
        ctx.err(span, format!("cycle: {}", names.join(" -> ")));
    }

    // ---- template references ----
    let ancestors = ancestors(&ups);
    for (i, t) in raw_tasks.iter().enumerate() {
        for site in &t.templates {
            let Ok(refs) = templates.referenced(&site.src) else {
                continue; // syntax error already reported
            };
            let mut refs: Vec<String> = refs.into_iter().collect();
            refs.sort();
            let mut reported: HashSet<String> = HashSet::new();
            for r in refs {
                let mut parts = r.split('.');
                let top_name = parts.next().unwrap_or("");
                let on = if site.from_defaults {
                    format!(" (from [defaults], in task `{}`)", t.id)
                } else {
                    String::new()
                };
                let scoped = match top_name {
                    MAPPED_ITEM => t.map_over.is_some() && site.scope != SiteScope::MapOver,
                    CHECKPOINT_RESULT => site.scope == SiteScope::CheckpointUpdate,
                    RECORD => site.scope == SiteScope::Record,
                    _ => false,
                };
                if scoped {
                    continue;
                }
                if !CONTEXT_NAMES.contains(&top_name) && !globals.iter().any(|g| g == top_name) {
                    if reported.insert(top_name.to_string()) {
                        let why = match top_name {
                            MAPPED_ITEM if site.scope == SiteScope::MapOver => {
                                " (`item` is the current element of a mapped task; `map_over` itself cannot read it)".to_string()
                            }
                            MAPPED_ITEM => " (`item` exists only in tasks with `map_over`)".to_string(),
                            CHECKPOINT_RESULT => {
                                " (`result` exists only in `checkpoint_update` templates)".to_string()
                            }
                            RECORD => " (`record` exists only in keys rendered once per record, such as `id` of es_index or `key` of kafka_produce)".to_string(),
                            _ => suggestion(top_name, CONTEXT_NAMES.iter().copied()),
                        };
                        ctx.err_at(
                            site.offset_of(top_name),
                            format!("unknown template variable `{top_name}`{on}{why}"),
                        );
                    }
                    continue;
                }
                if top_name == "checkpoint" {
                    if let Some(name) = parts.next() {
                        let needle = format!("checkpoint.{name}");
                        if !checkpoints.contains_key(name) && reported.insert(needle.clone()) {
                            let declared = if checkpoints.is_empty() {
                                " (the DAG declares no [checkpoints])".to_string()
                            } else {
                                suggestion(name, checkpoints.keys().map(String::as_str))
                            };
                            ctx.err_at(
                                site.offset_of(&needle),
                                format!("template reads unknown checkpoint `{name}`{on}{declared}"),
                            );
                        }
                    }
                    continue;
                }
                if top_name != "xcom" {
                    continue;
                }
                let Some(x) = parts.next() else { continue };
                let needle = format!("xcom.{x}");
                if !reported.insert(needle.clone()) {
                    continue;
                }
                match index.get(x) {
                    None => ctx.err_at(
                        site.offset_of(&needle),
                        format!(
                            "template reads `{needle}` but there is no task `{x}`{on}{}",
                            suggestion(x, task_ids.iter().map(String::as_str))
                        ),
                    ),
                    Some(&j) if !ancestors[i].contains(&j) => ctx.err_at(
                        site.offset_of(&needle),
                        format!(
                            "task {} reads xcom.{x} but {x} is not upstream of it{on}",
                            t.id
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
    }

    let Some(dag_id) = dag_id else {
        return Err(ctx.finish());
    };
    if !ctx.diags.is_empty() || has_cycle {
        return Err(ctx.finish());
    }

    // ---- build ----
    let order = topo_order(&ups, &downs);
    let mut tasks = IndexMap::with_capacity(n);
    let mut downstream = HashMap::with_capacity(n);
    let mut raw_tasks: Vec<Option<RawTask>> = raw_tasks.into_iter().map(Some).collect();
    for &i in &order {
        let Some(t) = raw_tasks[i].take() else {
            continue;
        };
        let c = t.common;
        let def = TaskDef {
            task_id: t.id.clone(),
            kind: c.kind.map(|(k, _)| k).unwrap_or_default(),
            upstream: std::mem::take(&mut upstream_names[i]),
            trigger_rule: c.trigger_rule.unwrap_or(TriggerRule::AllSuccess),
            retry: {
                let d = RetryPolicy::default();
                RetryPolicy {
                    retries: c.retries.unwrap_or(d.retries),
                    retry_delay_ms: c.retry_delay_ms.unwrap_or(d.retry_delay_ms),
                    backoff: c.retry_backoff.unwrap_or(d.backoff),
                    max_retry_delay_ms: c.max_retry_delay_ms.unwrap_or(d.max_retry_delay_ms),
                    jitter: c.retry_jitter.unwrap_or(d.jitter),
                }
            },
            timeout_ms: c.timeout_ms,
            pool: c.pool.unwrap_or_else(|| DEFAULT_POOL.to_string()),
            pool_slots: c.pool_slots.unwrap_or(1),
            priority_weight: c.priority_weight.unwrap_or(1),
            doc: c.doc,
            args: t.args,
            checkpoint_update: t.checkpoint_update,
            map_over: t.map_over,
            map_concurrency: t.map_concurrency,
        };
        tasks.insert(t.id, def);
    }
    for (i, ds) in downs.iter().enumerate() {
        let id = task_ids[i].clone();
        downstream.insert(id, ds.iter().map(|&j| task_ids[j].clone()).collect());
    }

    Ok(Dag {
        dag_id,
        description,
        schedule,
        timezone,
        start_date,
        end_date,
        catchup,
        max_active_runs,
        max_active_tasks,
        dagrun_timeout_ms,
        tags,
        params,
        checkpoints,
        is_paused_upon_creation,
        tasks,
        downstream,
        fileloc: path.display().to_string(),
        source_hash: fnv1a64_hex(src.as_bytes()),
    })
}

/// The shortest cycle through the lowest-numbered task of a strongly connected
/// component, as `[a, b, ..., a]` following downstream edges.
fn shortest_cycle(scc: &[usize], downs: &[Vec<usize>]) -> Vec<usize> {
    let start = scc[0];
    let in_scc: HashSet<usize> = scc.iter().copied().collect();
    let mut parent: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for &next in &downs[node] {
            if !in_scc.contains(&next) {
                continue;
            }
            if next == start {
                let mut path = vec![node];
                let mut cur = node;
                while cur != start {
                    cur = parent[&cur];
                    path.push(cur);
                }
                path.reverse();
                path.push(start);
                return path;
            }
            if next != start && !parent.contains_key(&next) {
                parent.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    // Unreachable for a real SCC; fall back to listing it.
    let mut v = scc.to_vec();
    v.push(start);
    v
}

/// For each task, the set of tasks upstream of it (transitively).
fn ancestors(ups: &[Vec<usize>]) -> Vec<HashSet<usize>> {
    (0..ups.len())
        .map(|i| {
            let mut seen = HashSet::new();
            let mut stack: Vec<usize> = ups[i].clone();
            while let Some(j) = stack.pop() {
                if seen.insert(j) {
                    stack.extend(ups[j].iter().copied());
                }
            }
            seen
        })
        .collect()
}

/// Kahn's algorithm, always taking the ready task that comes first in the file.
fn topo_order(ups: &[Vec<usize>], downs: &[Vec<usize>]) -> Vec<usize> {
    let mut indeg: Vec<usize> = ups.iter().map(Vec::len).collect();
    let mut ready: BinaryHeap<Reverse<usize>> = indeg
        .iter()
        .enumerate()
        .filter(|(_, d)| **d == 0)
        .map(|(i, _)| Reverse(i))
        .collect();
    let mut out = Vec::with_capacity(ups.len());
    while let Some(Reverse(i)) = ready.pop() {
        out.push(i);
        for &j in &downs[i] {
            indeg[j] -= 1;
            if indeg[j] == 0 {
                ready.push(Reverse(j));
            }
        }
    }
    out
}

/// Read and parse one file. An unreadable file is one diagnostic at 1:1.
pub fn load_file(path: &Path, registry: &dyn KindRegistry) -> Result<Dag, Vec<Diagnostic>> {
    match std::fs::read_to_string(path) {
        Ok(src) => parse_dag(&src, path, registry),
        Err(e) => Err(vec![Diagnostic {
            path: path.display().to_string(),
            line: 1,
            col: 1,
            message: format!("cannot read file: {e}"),
        }]),
    }
}

/// Every `*.toml` under `dir` (recursively, sorted), each validated on its own.
pub fn load_folder(dir: &Path, registry: &dyn KindRegistry) -> FolderLoad {
    let mut out = FolderLoad {
        dags: Vec::new(),
        errors: BTreeMap::new(),
    };
    if !dir.is_dir() {
        let key = dir.display().to_string();
        out.errors.insert(
            key.clone(),
            vec![Diagnostic {
                path: key,
                line: 1,
                col: 1,
                message: "DAG folder does not exist or is not a directory".into(),
            }],
        );
        return out;
    }
    let mut files = Vec::new();
    collect_toml_files(dir, &mut files, &mut out.errors);
    files.sort();
    let mut seen: HashMap<String, String> = HashMap::new();
    for file in files {
        let key = file.display().to_string();
        let src = match std::fs::read_to_string(&file) {
            Ok(s) => s,
            Err(e) => {
                out.errors.insert(
                    key.clone(),
                    vec![Diagnostic {
                        path: key,
                        line: 1,
                        col: 1,
                        message: format!("cannot read file: {e}"),
                    }],
                );
                continue;
            }
        };
        match parse_dag(&src, &file, registry) {
            Ok(dag) => {
                if let Some(first) = seen.get(&dag.dag_id) {
                    let (line, col) = dag_id_position(&src);
                    out.errors.insert(
                        key.clone(),
                        vec![Diagnostic {
                            path: key,
                            line,
                            col,
                            message: format!(
                                "dag id `{}` is already defined in {first}",
                                dag.dag_id
                            ),
                        }],
                    );
                } else {
                    seen.insert(dag.dag_id.clone(), key);
                    out.dags.push(dag);
                }
            }
            Err(diags) => {
                out.errors.insert(key, diags);
            }
        }
    }
    out
}

fn collect_toml_files(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    errors: &mut BTreeMap<String, Vec<Diagnostic>>,
) {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            let key = dir.display().to_string();
            errors.insert(
                key.clone(),
                vec![Diagnostic {
                    path: key,
                    line: 1,
                    col: 1,
                    message: format!("cannot read directory: {e}"),
                }],
            );
            return;
        }
    };
    for entry in rd.flatten() {
        let p = entry.path();
        // file_type() does not follow symlinks, so symlinked directory loops are not walked.
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            collect_toml_files(&p, out, errors);
        } else if p.extension().is_some_and(|e| e == "toml") && p.is_file() {
            out.push(p);
        }
    }
}

/// Line/col of `[dag] id`'s value (for duplicate-id errors), 1:1 if not found.
fn dag_id_position(src: &str) -> (usize, usize) {
    let Ok(root) = DeTable::parse(src) else {
        return (1, 1);
    };
    let offset = root
        .get_ref()
        .get("dag")
        .and_then(|d| d.get_ref().as_table())
        .and_then(|t| t.get("id"))
        .map(|v| v.span().start);
    match offset {
        Some(o) => LineIndex::new(src).line_col(o),
        None => (1, 1),
    }
}

#[cfg(test)]
#[path = "loader_tests.rs"]
mod tests;

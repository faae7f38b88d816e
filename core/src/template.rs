//! Jinja templates (minijinja) used in task arguments.

use std::collections::HashSet;

use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior, Value};

/// Names a template may use at top level (besides minijinja's global functions).
pub const CONTEXT_NAMES: &[&str] = &[
    "ds",
    "ds_nodash",
    "ts",
    "ts_nodash",
    "logical_date",
    "data_interval_start",
    "data_interval_end",
    "run_id",
    "params",
    "dag_run",
    "xcom",
    "var",
    "dag",
    "task",
    "try_number",
    "macros",
    "secrets",
    "checkpoint",
];

/// Names only some templates may read: `item` in a mapped task, `result` (the try's
/// XCom value) in `checkpoint_update`.
pub const MAPPED_ITEM: &str = "item";
/// In keys a kind renders once per record (an Elasticsearch document id, a Kafka key):
/// the record.
pub const RECORD: &str = "record";
pub const CHECKPOINT_RESULT: &str = "result";

/// A template that does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateSyntaxError {
    pub message: String,
    /// Byte offset into the template source (best effort).
    pub offset: usize,
}

impl std::fmt::Display for TemplateSyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TemplateSyntaxError {}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct RenderError {
    /// Where in the value the failing string is, e.g. `command`, `env.FOO`, `records[2]`.
    pub path: String,
    pub message: String,
}

pub struct Templates {
    env: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // Strict: a typo'd variable must fail the task, not render as "".
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Debug info gives error spans, used to name the undefined expression.
    env.set_debug(true);
    env.add_filter("fromjson", fromjson);
    env.add_filter("ds_add", ds_add);
    env.add_filter("flatten", flatten);
    env
}

/// One level of nesting removed: `[[a, b], [c]]` → `[a, b, c]` (the XCom of a mapped
/// task is a list of each instance's list); non-list items are kept as they are.
fn flatten(v: Value) -> Result<Value, Error> {
    let Ok(iter) = v.try_iter() else {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("flatten expects a list, got {}", v.kind()),
        ));
    };
    let mut out = Vec::new();
    for item in iter {
        if item.kind() == minijinja::value::ValueKind::Seq {
            out.extend(item.try_iter()?);
        } else {
            out.push(item);
        }
    }
    Ok(Value::from(out))
}

/// One environment for per-record templates, so compiled ones can be `'static`.
fn record_env() -> &'static Environment<'static> {
    static ENV: std::sync::OnceLock<Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(environment)
}

/// A template a kind renders once per record (`id = "{{ record.appid }}-{{ ds }}"`):
/// compiled once, evaluated with the try's context plus `record`. Follows the
/// single-expression rule of [`Templates::render_value`].
pub enum RecordTemplate {
    /// `{{ expr }}` alone: its native value.
    Expression(minijinja::Expression<'static, 'static>),
    /// Text and `{{ … }}` parts, joined as one string expression (`"a-" ~ (x)`).
    Joined(minijinja::Expression<'static, 'static>),
    /// Anything else (`{% … %}` blocks): rendered from source each time.
    Source(String),
    Literal(String),
}

/// `text {{ a }} more {{ b }}` as the expression `"text " ~ (a) ~ " more " ~ (b)`, when
/// the template has nothing but text and plain `{{ … }}` parts.
fn joined_expression(src: &str) -> Option<String> {
    if src.contains("{%") || src.contains("{#") || src.contains("{{-") || src.contains("-}}") {
        return None;
    }
    let mut parts = Vec::new();
    let mut rest = src;
    while let Some(open) = rest.find("{{") {
        let close = rest[open..].find("}}")? + open;
        if open > 0 {
            parts.push(format!("{:?}", &rest[..open]));
        }
        parts.push(format!("({})", rest[open + 2..close].trim()));
        rest = &rest[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(format!("{rest:?}"));
    }
    Some(parts.join(" ~ "))
}

impl RecordTemplate {
    pub fn compile(src: &str) -> Result<RecordTemplate, String> {
        let env = record_env();
        if let Some(expr) = single_expression(src) {
            return env
                .compile_expression_owned(expr.to_string())
                .map(RecordTemplate::Expression)
                .map_err(|e| describe(&e, expr));
        }
        if is_templated(src) {
            if let Some(joined) = joined_expression(src) {
                if let Ok(e) = env.compile_expression_owned(joined) {
                    return Ok(RecordTemplate::Joined(e));
                }
            }
            env.template_from_str(src).map_err(|e| describe(&e, src))?;
            return Ok(RecordTemplate::Source(src.to_string()));
        }
        Ok(RecordTemplate::Literal(src.to_string()))
    }

    /// Renders for one record; `base` is the try's template context (a map, or
    /// undefined outside a run).
    pub fn render(
        &self,
        base: &Value,
        record: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let ctx = minijinja::context! { record => Value::from_serialize(record), ..base.clone() };
        match self {
            RecordTemplate::Literal(s) => Ok(serde_json::Value::String(s.clone())),
            RecordTemplate::Expression(e) => {
                let v = e.eval(ctx).map_err(|e| describe(&e, ""))?;
                if v.is_undefined() {
                    return Err("the expression is undefined".into());
                }
                serde_json::to_value(&v).map_err(|e| e.to_string())
            }
            RecordTemplate::Joined(e) => {
                let v = e.eval(ctx).map_err(|e| describe(&e, ""))?;
                Ok(serde_json::Value::String(v.to_string()))
            }
            RecordTemplate::Source(src) => record_env()
                .render_str(src, ctx)
                .map(serde_json::Value::String)
                .map_err(|e| describe(&e, src)),
        }
    }
}

impl Templates {
    pub fn new() -> Self {
        Templates { env: environment() }
    }

    /// The underlying environment, for callers that need more than rendering.
    pub fn env(&self) -> &Environment<'static> {
        &self.env
    }

    /// Names of the environment's global functions (`range`, `dict`, ...), which
    /// templates may use besides [`CONTEXT_NAMES`].
    pub fn global_names(&self) -> Vec<String> {
        self.env.globals().map(|(n, _)| n.to_string()).collect()
    }

    pub fn check(&self, src: &str) -> Result<(), TemplateSyntaxError> {
        self.env
            .template_from_str(src)
            .map(|_| ())
            .map_err(|e| syntax_error(&e, src))
    }

    /// Top-level names and dotted attribute paths (`xcom.a`, `params.games`) the template reads.
    pub fn referenced(&self, src: &str) -> Result<HashSet<String>, TemplateSyntaxError> {
        let tmpl = self
            .env
            .template_from_str(src)
            .map_err(|e| syntax_error(&e, src))?;
        Ok(tmpl.undeclared_variables(true))
    }

    /// Render every string inside `value` (recursively; object keys are not rendered).
    ///
    /// A string that is exactly one `{{ expression }}` (after trimming) is evaluated
    /// natively, so `"{{ xcom.a }}"` yields the JSON array/object/number itself; any
    /// other string with template syntax renders to a string; plain strings pass as is.
    pub fn render_value(
        &self,
        value: &serde_json::Value,
        ctx: &Value,
    ) -> Result<serde_json::Value, RenderError> {
        self.render_at(value, ctx, &mut String::new())
    }

    /// Render one template to a string (no native evaluation); errors use the path `template`.
    pub fn render_str(&self, src: &str, ctx: &Value) -> Result<String, RenderError> {
        self.env.render_str(src, ctx).map_err(|e| RenderError {
            path: "template".into(),
            message: describe(&e, src),
        })
    }

    fn render_at(
        &self,
        value: &serde_json::Value,
        ctx: &Value,
        path: &mut String,
    ) -> Result<serde_json::Value, RenderError> {
        use serde_json::Value as J;
        match value {
            J::String(s) => self.render_string(s, ctx).map_err(|message| RenderError {
                path: if path.is_empty() {
                    "value".into()
                } else {
                    path.clone()
                },
                message,
            }),
            J::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    let r = self.render_at(item, ctx, path);
                    path.truncate(len);
                    out.push(r?);
                }
                Ok(J::Array(out))
            }
            J::Object(map) => {
                let mut out = serde_json::Map::with_capacity(map.len());
                for (k, v) in map {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                    let r = self.render_at(v, ctx, path);
                    path.truncate(len);
                    out.insert(k.clone(), r?);
                }
                Ok(J::Object(out))
            }
            other => Ok(other.clone()),
        }
    }

    fn render_string(&self, s: &str, ctx: &Value) -> Result<serde_json::Value, String> {
        if let Some(expr) = single_expression(s) {
            let compiled = self
                .env
                .compile_expression(expr)
                .map_err(|e| describe(&e, expr))?;
            let v = compiled.eval(ctx).map_err(|e| describe(&e, expr))?;
            if v.is_undefined() {
                // Strict mode normally errors first; this guards filters returning undefined.
                return Err(format!("undefined value: `{}`", expr.trim()));
            }
            return serde_json::to_value(&v).map_err(|e| e.to_string());
        }
        if is_templated(s) {
            let out = self.env.render_str(s, ctx).map_err(|e| describe(&e, s))?;
            return Ok(serde_json::Value::String(out));
        }
        Ok(serde_json::Value::String(s.to_string()))
    }
}

/// Whether a string contains template syntax at all.
pub(crate) fn is_templated(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// If `s` (trimmed) is exactly one `{{ expression }}`, the expression.
fn single_expression(s: &str) -> Option<&str> {
    let t = s.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    // Whitespace-control markers belong to the tags, not the expression.
    let inner = inner.strip_prefix(['-', '+']).unwrap_or(inner);
    let inner = inner.strip_suffix(['-', '+']).unwrap_or(inner);
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") || inner.contains("{#")
    {
        return None;
    }
    if inner.trim().is_empty() {
        return None;
    }
    Some(inner)
}

/// minijinja's message, plus the failing source excerpt when the message alone
/// would not say what was undefined.
fn describe(e: &Error, src: &str) -> String {
    let mut msg = match e.detail() {
        Some(d) => format!("{}: {}", e.kind(), d),
        None => e.kind().to_string(),
    };
    if let Some(r) = e.range() {
        // minijinja's span for `a.b.c` may cover only `.b.c`; widen it to the whole path.
        let bytes = src.as_bytes();
        let mut start = r.start.min(src.len());
        while start > 0
            && (bytes[start - 1].is_ascii_alphanumeric() || matches!(bytes[start - 1], b'_' | b'.'))
        {
            start -= 1;
        }
        if let Some(snippet) = src.get(start..r.end) {
            let snippet = snippet.trim();
            if !snippet.is_empty() && !msg.contains(snippet) {
                msg.push_str(&format!(" (in `{snippet}`)"));
            }
        }
    }
    if let Some(line) = e.line() {
        if src.contains('\n') {
            msg.push_str(&format!(" at template line {line}"));
        }
    }
    msg
}

fn syntax_error(e: &Error, src: &str) -> TemplateSyntaxError {
    let offset = match (e.range(), e.line()) {
        (Some(r), _) => r.start.min(src.len()),
        (None, Some(line)) => src
            .split_inclusive('\n')
            .take(line.saturating_sub(1))
            .map(str::len)
            .sum(),
        (None, None) => 0,
    };
    let message = match e.detail() {
        Some(d) => format!("template {}: {}", e.kind(), d),
        None => format!("template {}", e.kind()),
    };
    TemplateSyntaxError { message, offset }
}

fn fromjson(s: String) -> Result<Value, Error> {
    let v: serde_json::Value = serde_json::from_str(&s).map_err(|e| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("fromjson: invalid JSON: {e}"),
        )
    })?;
    Ok(Value::from_serialize(&v))
}

/// Airflow's `macros.ds_add`: shift a YYYY-MM-DD date by `days`.
fn ds_add(ds: String, days: i64) -> Result<String, Error> {
    let d = chrono::NaiveDate::parse_from_str(&ds, "%Y-%m-%d").map_err(|e| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("ds_add: `{ds}` is not a YYYY-MM-DD date: {e}"),
        )
    })?;
    let shifted = chrono::TimeDelta::try_days(days)
        .and_then(|delta| d.checked_add_signed(delta))
        .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "ds_add: date out of range"))?;
    Ok(shifted.format("%Y-%m-%d").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_removes_one_level() {
        let t = Templates::new();
        let ctx = Value::from_serialize(serde_json::json!({"x": [[1, 2], [3], 4, []]}));
        assert_eq!(
            t.render_value(&serde_json::json!("{{ x | flatten }}"), &ctx)
                .unwrap(),
            serde_json::json!([1, 2, 3, 4])
        );
    }

    #[test]
    fn record_templates_see_the_record_and_the_context() {
        let base = Value::from_serialize(serde_json::json!({"ds_nodash": "20261122"}));
        let rec = serde_json::json!({"appid": 730, "game": "Counter-Strike 2", "n": 5});
        let render = |src: &str| {
            RecordTemplate::compile(src)
                .unwrap()
                .render(&base, &rec)
                .unwrap()
        };
        assert_eq!(render("{{ record.appid }}"), serde_json::json!(730));
        assert_eq!(
            render("{{ record.appid }}-{{ ds_nodash }}"),
            serde_json::json!("730-20261122")
        );
        assert_eq!(
            render("id \"{{ record.game | lower }}\""),
            serde_json::json!("id \"counter-strike 2\"")
        );
        assert_eq!(
            render("{% if record.n > 3 %}big{% else %}small{% endif %}"),
            serde_json::json!("big")
        );
        assert_eq!(render("constant"), serde_json::json!("constant"));
        let err = RecordTemplate::compile("{{ record.nope }}")
            .unwrap()
            .render(&base, &rec)
            .unwrap_err();
        assert!(err.contains("undefined"), "{err}");
        assert!(RecordTemplate::compile("{{ record. }}").is_err());
    }
    use serde_json::json;

    fn ctx() -> Value {
        Value::from_serialize(json!({
            "ds": "2024-08-01",
            "params": {"games": {"pubg": 578080}, "x": 3},
            "xcom": {"a": [1, 2, 3], "b": {"n": 7}, "s": "{\"k\": 1}"},
        }))
    }

    #[test]
    fn single_expression_is_native() {
        let t = Templates::new();
        let v = t
            .render_value(
                &json!({"list": "{{ xcom.a }}", "n": " {{ xcom.b.n }} "}),
                &ctx(),
            )
            .unwrap();
        assert_eq!(v, json!({"list": [1, 2, 3], "n": 7}));
        let v = t
            .render_value(&json!("{{ params.games }}"), &ctx())
            .unwrap();
        assert_eq!(v, json!({"pubg": 578080}));
        let v = t
            .render_value(&json!("{{- xcom.b.n * 2 -}}"), &ctx())
            .unwrap();
        assert_eq!(v, json!(14));
    }

    #[test]
    fn mixed_strings_render_as_strings() {
        let t = Templates::new();
        let v = t
            .render_value(
                &json!({"cmd": "echo {{ xcom.b.n }}", "two": "{{ ds }} {{ params.x }}", "plain": "a}}b", "num": 5}),
                &ctx(),
            )
            .unwrap();
        assert_eq!(
            v,
            json!({"cmd": "echo 7", "two": "2024-08-01 3", "plain": "a}}b", "num": 5})
        );
        assert_eq!(
            t.render_str("{{ ds | ds_add(3) }}", &ctx()).unwrap(),
            "2024-08-04"
        );
        let v = t
            .render_value(&json!("{{ (xcom.s | fromjson).k }}"), &ctx())
            .unwrap();
        assert_eq!(v, json!(1));
        let v = t
            .render_value(
                &json!("{% for k, v in params.games | items %}{{ k }}={{ v }}{% endfor %}"),
                &ctx(),
            )
            .unwrap();
        assert_eq!(v, json!("pubg=578080"));
    }

    #[test]
    fn strict_undefined_names_the_missing_thing() {
        let t = Templates::new();
        let e = t
            .render_value(&json!({"env": {"FOO": "x {{ xcom.nope }} y"}}), &ctx())
            .unwrap_err();
        assert_eq!(e.path, "env.FOO");
        assert!(e.message.contains("undefined"), "{}", e.message);
        assert!(e.message.contains("xcom.nope"), "{}", e.message);
        let e = t
            .render_value(&json!({"records": [1, 2, "{{ missing_var }}"]}), &ctx())
            .unwrap_err();
        assert_eq!(e.path, "records[2]");
        assert!(e.message.contains("missing_var"), "{}", e.message);
        assert!(e.to_string().starts_with("records[2]: "));
    }

    #[test]
    fn referenced_finds_dotted_paths() {
        let t = Templates::new();
        let r = t
            .referenced("{{ xcom.a }} {% if params.x %}{{ ds }}{% endif %}")
            .unwrap();
        assert!(r.contains("xcom.a"), "{r:?}");
        assert!(r.contains("params.x"), "{r:?}");
        assert!(r.contains("ds"), "{r:?}");
        let r = t
            .referenced("{% for i in range(3) %}{{ i }}{% endfor %}")
            .unwrap();
        assert!(!r.contains("i"));
    }

    #[test]
    fn templates_are_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Templates>();
    }

    #[test]
    fn check_reports_offsets() {
        let t = Templates::new();
        assert!(t.check("echo {{ ds }}").is_ok());
        let e = t.check("echo {{ ds ").unwrap_err();
        assert!(e.message.contains("syntax error"), "{}", e.message);
        assert!(e.offset <= "echo {{ ds ".len());
        let e = t.check("line one\nline {{ ds + }}").unwrap_err();
        assert!(e.offset >= "line one\n".len(), "{e:?}");
    }
}

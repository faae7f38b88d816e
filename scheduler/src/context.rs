//! The template context of a try: the names Airflow users expect (`ds`, `ts`,
//! `params`, `dag_run.conf`, `xcom`, `var`, …), built only as far as a task's templates
//! need — a task with no templates costs nothing here.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use chrono::{DateTime, NaiveDate, Utc};
use minijinja::Value as JValue;
use serde_json::{Map, Value};
use sluice_core::{Dag, TaskDef, Templates};
use sluice_store::{Store, XcomValue};
use sluice_tasks::Secrets;

use crate::checkpoints::Checkpoints;

/// What the context is built for.
pub struct RunInfo<'a> {
    pub dag: &'a Dag,
    pub task: &'a TaskDef,
    /// None for `sluice tasks test`, which runs outside any recorded run.
    pub run_pk: Option<i64>,
    pub run_id: &'a str,
    pub run_type: &'a str,
    pub logical_date: DateTime<Utc>,
    pub data_interval_start: DateTime<Utc>,
    pub data_interval_end: DateTime<Utc>,
    pub conf: &'a Value,
    pub try_number: i64,
    pub map_index: i64,
    /// The element of `map_over` a mapped task instance runs for (`item`).
    pub item: Option<Value>,
    /// The try's XCom value, when rendering `checkpoint_update` (`result`).
    pub result: Option<Value>,
    pub checkpoints: &'a Checkpoints,
}

/// True when any string in `v` holds template syntax.
pub fn has_templates(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains("{{") || s.contains("{%"),
        Value::Array(a) => a.iter().any(has_templates),
        Value::Object(o) => o.values().any(has_templates),
        _ => false,
    }
}

fn collect_refs(templates: &Templates, v: &Value, out: &mut HashSet<String>) {
    match v {
        Value::String(s) if s.contains("{{") || s.contains("{%") => {
            if let Ok(refs) = templates.referenced(s) {
                out.extend(refs);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(templates, x, out)),
        Value::Object(o) => o.values().for_each(|x| collect_refs(templates, x, out)),
        _ => {}
    }
}

/// The second segment of dotted references under `root` (`xcom.a.n` → `a`), and
/// whether `root` is also used as a whole (dynamic access such as `xcom[name]`).
fn members(refs: &HashSet<String>, root: &str) -> (Vec<String>, bool) {
    let prefix = format!("{root}.");
    let mut names: Vec<String> = refs
        .iter()
        .filter_map(|r| r.strip_prefix(&prefix))
        .map(|rest| rest.split('.').next().unwrap_or(rest).to_string())
        .collect();
    names.sort();
    names.dedup();
    (names, refs.contains(root))
}

/// Reads an XCom value, from the database row or its artifact file.
pub fn read_xcom(value: &XcomValue, artifacts_dir: &Path) -> Result<Value, String> {
    match value {
        XcomValue::Inline(text) => {
            serde_json::from_str(text).map_err(|e| format!("stored XCom is not JSON: {e}"))
        }
        XcomValue::Artifact { path, .. } => {
            let full = artifacts_dir.join(path);
            let bytes = std::fs::read(&full)
                .map_err(|e| format!("cannot read XCom artifact {}: {e}", full.display()))?;
            serde_json::from_slice(&bytes)
                .map_err(|e| format!("XCom artifact {} is not JSON: {e}", full.display()))
        }
    }
}

/// Why a context could not be built, and whether trying again may help.
#[derive(Debug)]
pub struct ContextError {
    pub message: String,
    /// A server (the store, Redis) could not be read; a missing XCom, variable or
    /// secret will not appear by retrying.
    pub retryable: bool,
}

impl ContextError {
    fn unavailable(message: String) -> ContextError {
        ContextError {
            message,
            retryable: true,
        }
    }

    fn missing(message: String) -> ContextError {
        ContextError {
            message,
            retryable: false,
        }
    }
}

impl std::fmt::Display for ContextError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Builds the context for rendering `args`. Errors name what is missing: an XCom a
/// template reads that no task pushed, or an unset variable.
pub async fn build(
    store: &Store,
    templates: &Templates,
    artifacts_dir: &Path,
    secrets: &Secrets,
    info: &RunInfo<'_>,
    args: &Value,
) -> Result<JValue, ContextError> {
    let mut refs = HashSet::new();
    collect_refs(templates, args, &mut refs);
    let mut ctx = BTreeMap::<String, JValue>::new();

    let ld = info.logical_date;
    ctx.insert("ds".into(), JValue::from(ld.format("%Y-%m-%d").to_string()));
    ctx.insert(
        "ds_nodash".into(),
        JValue::from(ld.format("%Y%m%d").to_string()),
    );
    ctx.insert("ts".into(), JValue::from(rfc3339(ld)));
    ctx.insert(
        "ts_nodash".into(),
        JValue::from(ld.format("%Y%m%dT%H%M%S").to_string()),
    );
    ctx.insert("logical_date".into(), JValue::from(rfc3339(ld)));
    ctx.insert(
        "data_interval_start".into(),
        JValue::from(rfc3339(info.data_interval_start)),
    );
    ctx.insert(
        "data_interval_end".into(),
        JValue::from(rfc3339(info.data_interval_end)),
    );
    ctx.insert("run_id".into(), JValue::from(info.run_id));
    ctx.insert("try_number".into(), JValue::from(info.try_number));

    // DAG params, overridden by the run's conf (Airflow's dag_run_conf_overrides_params).
    let mut params: Map<String, Value> = info.dag.params.clone();
    if let Value::Object(conf) = info.conf {
        for (k, v) in conf {
            params.insert(k.clone(), v.clone());
        }
    }
    ctx.insert("params".into(), JValue::from_serialize(&params));
    ctx.insert(
        "dag_run".into(),
        JValue::from_serialize(serde_json::json!({
            "dag_id": info.dag.dag_id,
            "run_id": info.run_id,
            "run_type": info.run_type,
            "conf": info.conf,
            "logical_date": rfc3339(ld),
            "data_interval_start": rfc3339(info.data_interval_start),
            "data_interval_end": rfc3339(info.data_interval_end),
        })),
    );
    ctx.insert(
        "dag".into(),
        JValue::from_serialize(serde_json::json!({
            "dag_id": info.dag.dag_id,
            "tags": info.dag.tags,
            "timezone": info.dag.timezone.name(),
        })),
    );
    ctx.insert(
        "task".into(),
        JValue::from_serialize(serde_json::json!({
            "task_id": info.task.task_id,
            "kind": info.task.kind,
            "map_index": info.map_index,
        })),
    );
    ctx.insert("macros".into(), macros());
    if let Some(item) = &info.item {
        ctx.insert("item".into(), JValue::from_serialize(item));
    }
    if let Some(result) = &info.result {
        ctx.insert("result".into(), JValue::from_serialize(result));
    }
    if refs
        .iter()
        .any(|r| r == "checkpoint" || r.starts_with("checkpoint."))
    {
        let values = info
            .checkpoints
            .current(info.dag)
            .await
            .map_err(ContextError::unavailable)?;
        ctx.insert("checkpoint".into(), JValue::from_serialize(&values));
    }

    let (xcom_tasks, xcom_dynamic) = members(&refs, "xcom");
    if xcom_dynamic || !xcom_tasks.is_empty() {
        let mut values = Map::new();
        if let Some(run_pk) = info.run_pk {
            let rows = store
                .xcoms(run_pk, (!xcom_dynamic).then_some(xcom_tasks.as_slice()))
                .await
                .map_err(|e| ContextError::unavailable(format!("cannot read XComs: {e}")))?;
            for row in rows.iter().filter(|r| r.key == "return_value") {
                let v = read_xcom(&row.value, artifacts_dir)
                    .map_err(|e| ContextError::unavailable(format!("xcom.{}: {e}", row.task_id)))?;
                if row.map_index >= 0 {
                    let slot = values
                        .entry(row.task_id.clone())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(items) = slot {
                        items.push(v);
                    }
                } else {
                    values.insert(row.task_id.clone(), v);
                }
            }
        }
        for t in &xcom_tasks {
            if !values.contains_key(t) {
                return Err(ContextError::missing(format!(
                    "xcom.{t} does not exist: task `{t}` pushed no XCom value in run {} \
                     (it returned nothing, or has not run)",
                    info.run_id
                )));
            }
        }
        ctx.insert("xcom".into(), JValue::from_serialize(&values));
    }

    let (secret_names, secrets_dynamic) = members(&refs, "secrets");
    if secrets_dynamic || !secret_names.is_empty() {
        let all = secrets.for_templates();
        for name in &secret_names {
            if !all.contains_key(name) {
                return Err(ContextError::missing(format!(
                    "secret `{name}` is not set: set SLUICE_SECRET_{}, add it under [secrets] in sluice.toml, or store it with `sluice secrets set {name}`",
                    name.to_uppercase()
                )));
            }
        }
        ctx.insert("secrets".into(), JValue::from_serialize(&all));
    }

    let (var_kinds, var_dynamic) = members(&refs, "var");
    if var_dynamic || !var_kinds.is_empty() {
        let vars = store
            .variables()
            .await
            .map_err(|e| ContextError::unavailable(format!("cannot read variables: {e}")))?;
        let mut value = Map::new();
        let mut json = Map::new();
        for v in vars {
            if let Ok(parsed) = serde_json::from_str::<Value>(&v.value) {
                json.insert(v.key.clone(), parsed);
            }
            value.insert(v.key, Value::String(v.value));
        }
        for r in &refs {
            for (prefix, map) in [("var.value.", &value), ("var.json.", &json)] {
                if let Some(rest) = r.strip_prefix(prefix) {
                    let name = rest.split('.').next().unwrap_or(rest);
                    if !map.contains_key(name) {
                        let why = if prefix == "var.json." && value.contains_key(name) {
                            "is not valid JSON"
                        } else {
                            "is not set"
                        };
                        return Err(ContextError::missing(format!(
                            "variable `{name}` {why} (read as {prefix}{name})"
                        )));
                    }
                }
            }
        }
        ctx.insert(
            "var".into(),
            JValue::from_serialize(serde_json::json!({"value": value, "json": json})),
        );
    }
    Ok(JValue::from(ctx))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

/// Airflow's most used macros.
fn macros() -> JValue {
    let mut m = BTreeMap::<String, JValue>::new();
    m.insert(
        "ds_add".into(),
        JValue::from_function(
            |ds: String, days: i64| -> Result<String, minijinja::Error> {
                let d = NaiveDate::parse_from_str(&ds, "%Y-%m-%d").map_err(|e| {
                    minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        format!("ds_add: {ds:?} is not YYYY-MM-DD: {e}"),
                    )
                })?;
                Ok((d + chrono::Duration::days(days))
                    .format("%Y-%m-%d")
                    .to_string())
            },
        ),
    );
    m.insert(
        "ds_format".into(),
        JValue::from_function(
            |ds: String, input: String, output: String| -> Result<String, minijinja::Error> {
                let d = NaiveDate::parse_from_str(&ds, &input).map_err(|e| {
                    minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        format!("ds_format: {ds:?} does not match {input:?}: {e}"),
                    )
                })?;
                Ok(d.format(&output).to_string())
            },
        ),
    );
    JValue::from(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_finds_task_names() {
        let refs: HashSet<String> = ["xcom.a.n", "xcom.b", "params.x", "var.value.k"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(
            members(&refs, "xcom"),
            (vec!["a".to_string(), "b".to_string()], false)
        );
        assert_eq!(members(&refs, "var"), (vec!["value".to_string()], false));
    }

    #[test]
    fn has_templates_looks_inside_structures() {
        assert!(has_templates(&serde_json::json!({"a": ["x", "{{ ds }}"]})));
        assert!(!has_templates(&serde_json::json!({"a": ["x", 3]})));
    }
}

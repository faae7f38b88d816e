//! DAG checkpoints: named cursors (`[checkpoints]` in a DAG file) that templates read
//! as `{{ checkpoint.NAME }}` and tasks advance with `checkpoint_update`.
//!
//! The metadata store is the source of truth for what runs committed: a try's
//! proposals become `task_state` rows (namespace `checkpoint:<dag>`) in the same
//! transaction that marks its run successful, so a failed run never moves a cursor.
//! When a `redis_default` connection is configured, the same commit also fills an
//! outbox, and the values are written to the Redis hash `sluice:checkpoints:<dag>`
//! from there — right after the run finishes, and again by any later flush if a
//! process died in between. Reads then prefer Redis, so an operator can reset a
//! cursor with `HSET`. Each Redis write is guarded by the commit time of its value, so
//! a slow flusher can never put an older value over a newer one — whichever store
//! (a team's PostgreSQL, the throwaway store of `dags test`) committed it.

use std::collections::HashMap;
use std::time::Duration;

use indexmap::IndexMap;
use serde_json::Value;
use sluice_core::Dag;
use sluice_store::{checkpoint_namespace, Store};
use sluice_tasks::Connections;
use tokio::sync::Mutex;

/// The connection checkpoints are mirrored to, when it is configured.
pub const REDIS_CONNECTION: &str = "redis_default";
/// Attempts to reach Redis before a read or flush fails (with backoff between).
const REDIS_ATTEMPTS: u32 = 3;
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);
const OUTBOX_BATCH: i64 = 500;

/// The Redis hash holding a DAG's checkpoints.
pub fn redis_key(dag_id: &str) -> String {
    format!("sluice:checkpoints:{dag_id}")
}

/// Sets each field unless Redis holds a value committed later (commit times in
/// microseconds, kept in a companion hash out of the users' way). KEYS[1] = values,
/// KEYS[2] = commit times; ARGV = name, value, time, name, value, time, ...
const GUARDED_HSET: &str = r"
for i = 1, #ARGV, 3 do
  local seen = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0')
  local seq = tonumber(ARGV[i + 2])
  if seq >= seen then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
  end
end
return 1
";

struct RedisMirror {
    client: redis::Client,
    /// The URI with any password hidden, for messages.
    shown: String,
    conn: Mutex<Option<redis::aio::MultiplexedConnection>>,
    script: redis::Script,
}

/// Reads and flushes checkpoints; cheap to clone the handle around it.
pub struct Checkpoints {
    store: Store,
    redis: Option<Result<RedisMirror, String>>,
}

impl Checkpoints {
    /// Checkpoints kept in `store`, mirrored to `redis_default` when `conns` has it.
    /// A `redis_default` that is not a Redis URI makes every read fail with the reason
    /// ([`Checkpoints::validate`] finds it at start).
    pub fn new(store: Store, conns: &Connections) -> Checkpoints {
        let redis = conns.get(REDIS_CONNECTION).ok().map(|c| {
            redis::Client::open(c.uri())
                .map(|client| RedisMirror {
                    client,
                    shown: c.redacted_uri(),
                    conn: Mutex::new(None),
                    script: redis::Script::new(GUARDED_HSET),
                })
                .map_err(|e| {
                    format!(
                        "connection {REDIS_CONNECTION} ({}) is not a Redis URI: {e}",
                        c.redacted_uri()
                    )
                })
        });
        Checkpoints { store, redis }
    }

    /// Checks that a configured `redis_default` is a Redis URI.
    pub fn validate(conns: &Connections) -> Result<(), String> {
        match conns.get(REDIS_CONNECTION) {
            Ok(c) => redis::Client::open(c.uri()).map(|_| ()).map_err(|e| {
                format!(
                    "connection {REDIS_CONNECTION} ({}) is not a Redis URI: {e}",
                    c.redacted_uri()
                )
            }),
            Err(_) => Ok(()),
        }
    }

    fn mirror(&self) -> Result<Option<&RedisMirror>, String> {
        match &self.redis {
            None => Ok(None),
            Some(Ok(r)) => Ok(Some(r)),
            Some(Err(e)) => Err(e.clone()),
        }
    }

    /// Where checkpoints live, for `dags show`.
    pub fn describe(&self, dag_id: &str) -> String {
        match &self.redis {
            Some(Ok(r)) => format!("Redis {} (hash {})", r.shown, redis_key(dag_id)),
            Some(Err(e)) => e.clone(),
            None => "the metadata store (no redis_default connection)".to_string(),
        }
    }

    /// The current value of each checkpoint the DAG declares: what Redis holds, else
    /// what the last successful run committed, else the initial value.
    pub async fn current(&self, dag: &Dag) -> Result<IndexMap<String, Value>, String> {
        let mut values = dag.checkpoints.clone();
        if values.is_empty() {
            return Ok(values);
        }
        let committed = self
            .store
            .state_all(&checkpoint_namespace(&dag.dag_id))
            .await
            .map_err(|e| format!("cannot read checkpoints from the store: {e}"))?;
        for (name, text) in committed {
            if let Some(slot) = values.get_mut(&name) {
                *slot = typed(&text);
            }
        }
        if let Some(r) = self.mirror()? {
            // Anything committed but not yet in Redis goes there first.
            self.flush().await?;
            let key = redis_key(&dag.dag_id);
            let in_redis: HashMap<String, String> = r
                .call(|mut c| {
                    let key = key.clone();
                    async move { redis::cmd("HGETALL").arg(&key).query_async(&mut c).await }
                })
                .await?;
            for (name, text) in in_redis {
                if let Some(slot) = values.get_mut(&name) {
                    *slot = typed(&text);
                }
            }
        }
        Ok(values)
    }

    /// Writes committed checkpoint values still in the outbox to Redis (without
    /// Redis, just empties the outbox). Returns how many were written.
    pub async fn flush(&self) -> Result<usize, String> {
        let mirror = self.mirror()?;
        let mut written = 0;
        loop {
            let entries = self
                .store
                .checkpoint_outbox(OUTBOX_BATCH)
                .await
                .map_err(|e| format!("cannot read the checkpoint outbox: {e}"))?;
            if entries.is_empty() {
                return Ok(written);
            }
            if let Some(r) = mirror {
                let mut by_dag: IndexMap<&str, Vec<&sluice_store::OutboxEntry>> = IndexMap::new();
                for e in &entries {
                    by_dag.entry(e.dag_id.as_str()).or_default().push(e);
                }
                for (dag_id, items) in by_dag {
                    let (values_key, seq_key) =
                        (redis_key(dag_id), format!("{}:seq", redis_key(dag_id)));
                    let (values_key, seq_key, items, script) =
                        (&values_key, &seq_key, &items, &r.script);
                    r.call(|mut c| async move {
                        let mut inv = script.prepare_invoke();
                        inv.key(values_key).key(seq_key);
                        for e in items {
                            inv.arg(&e.name)
                                .arg(&e.value)
                                .arg(e.committed_at.timestamp_micros());
                        }
                        inv.invoke_async::<i64>(&mut c).await
                    })
                    .await?;
                }
            }
            let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
            self.store
                .checkpoint_outbox_done(&ids)
                .await
                .map_err(|e| format!("cannot clear the checkpoint outbox: {e}"))?;
            written += entries.len();
        }
    }
}

impl RedisMirror {
    /// Runs `op` on a (cached) connection, reconnecting and retrying with backoff; the
    /// final error names the server.
    async fn call<T, F, Fut>(&self, op: F) -> Result<T, String>
    where
        F: Fn(redis::aio::MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let mut last = String::new();
        for attempt in 1..=REDIS_ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(sluice_core::backoff(
                    attempt - 1,
                    Duration::from_millis(200),
                    Duration::from_secs(2),
                ))
                .await;
            }
            let conn = {
                let mut slot = self.conn.lock().await;
                match slot.as_ref() {
                    Some(c) => c.clone(),
                    None => {
                        let cfg = redis::AsyncConnectionConfig::new()
                            .set_connection_timeout(Some(REDIS_TIMEOUT))
                            .set_response_timeout(Some(REDIS_TIMEOUT));
                        match self
                            .client
                            .get_multiplexed_async_connection_with_config(&cfg)
                            .await
                        {
                            Ok(c) => {
                                *slot = Some(c.clone());
                                c
                            }
                            Err(e) => {
                                last = e.to_string();
                                continue;
                            }
                        }
                    }
                }
            };
            match op(conn).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    last = e.to_string();
                    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                        *self.conn.lock().await = None;
                    } else {
                        break; // a command error: retrying will not help
                    }
                }
            }
        }
        Err(format!(
            "Redis {} (connection {REDIS_CONNECTION}) failed after {REDIS_ATTEMPTS} attempts: {last}",
            self.shown
        ))
    }
}

/// A stored checkpoint value as templates see it: integers and floats as numbers
/// when the text is exactly their canonical form (so `"007"` stays a string), the
/// rest as strings.
pub fn typed(text: &str) -> Value {
    if let Ok(i) = text.parse::<i64>() {
        if i.to_string() == text {
            return Value::from(i);
        }
    }
    if let Ok(f) = text.parse::<f64>() {
        if f.is_finite() && f.to_string() == text {
            return Value::from(f);
        }
    }
    match text {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(text.to_string()),
    }
}

/// The text a rendered `checkpoint_update` value is stored as; None keeps the
/// current value (an empty result: nothing new was seen).
pub fn stored_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) if s.trim().is_empty() || s == "None" || s == "none" => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values_round_trip_only_canonical_numbers() {
        assert_eq!(
            typed("76561197960499900"),
            Value::from(76561197960499900i64)
        );
        assert_eq!(typed("007"), Value::from("007"));
        assert_eq!(typed("1.5"), Value::from(1.5));
        assert_eq!(typed("true"), Value::Bool(true));
        assert_eq!(typed("2026-01-01"), Value::from("2026-01-01"));
    }

    #[test]
    fn empty_results_keep_the_cursor() {
        assert_eq!(stored_text(&Value::Null), None);
        assert_eq!(stored_text(&Value::from("  ")), None);
        assert_eq!(stored_text(&Value::from(42)), Some("42".into()));
        assert_eq!(stored_text(&Value::from("abc")), Some("abc".into()));
    }
}

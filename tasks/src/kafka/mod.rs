//! `kafka_produce` and `kafka_consume`: Kafka through librdkafka (the `rdkafka` crate).
//!
//! Both kinds take a `connection` (default `kafka_default`) whose URI is
//! `kafka://host:port?client.option=value`; several brokers are written
//! `kafka://h1:9092,h2:9092` (or `?bootstrap.servers=h1:9092,h2:9092`). Query parameters are passed to librdkafka as they are (`security.protocol`,
//! `sasl.mechanism`, `linger.ms`, …) and the URI's login/password become
//! `sasl.username`/`sasl.password`.
//!
//! Before doing anything else a try fetches metadata from the brokers, a few times with
//! backoff; when they stay unreachable the try fails naming them instead of letting
//! librdkafka wait for minutes.

mod consume;
mod produce;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::metadata::Metadata;
use rdkafka::{ClientConfig, ClientContext};
use serde_json::{Map, Value};

use crate::{opt_str, TaskContext, TaskError, TryLog};

pub use consume::KafkaConsume;
pub use produce::KafkaProduce;

const DEFAULT_CONNECTION: &str = "kafka_default";
/// Metadata fetches before a try gives up on unreachable brokers.
const CONNECT_ATTEMPTS: u32 = 3;
/// How long one metadata fetch may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// librdkafka settings for a connection, and the broker list for messages.
struct Client {
    config: ClientConfig,
    brokers: String,
}

impl Client {
    fn from_args(ctx: &TaskContext, args: &Map<String, Value>) -> Result<Client, TaskError> {
        let name = opt_str(args, "connection")?.unwrap_or(DEFAULT_CONNECTION);
        let conn = ctx.conns.get(name)?;
        if conn.conn_type != "kafka" {
            return Err(TaskError::Fatal(format!(
                "connection `{name}` is a {}:// URI; Kafka kinds need kafka://host:port",
                conn.conn_type
            )));
        }
        let brokers = match conn.extra.get("bootstrap.servers") {
            Some(b) => b.clone(),
            None => authority_hosts(conn.uri()),
        };
        if brokers.is_empty() {
            return Err(TaskError::Fatal(format!(
                "connection `{name}` names no broker: expected kafka://host:port"
            )));
        }
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &brokers);
        // Logs go to the try's log through `LogContext`; without this librdkafka only
        // reports errors through the error callback.
        config.set_log_level(RDKafkaLogLevel::Warning);
        if let Some(login) = &conn.login {
            config.set("sasl.username", login);
            config.set("sasl.password", conn.password.as_deref().unwrap_or(""));
            if !conn.extra.contains_key("security.protocol") {
                config.set("security.protocol", "SASL_PLAINTEXT");
            }
            if !conn.extra.contains_key("sasl.mechanism")
                && !conn.extra.contains_key("sasl.mechanisms")
            {
                config.set("sasl.mechanism", "PLAIN");
            }
        }
        for (k, v) in &conn.extra {
            if k != "bootstrap.servers" {
                config.set(k, v);
            }
        }
        Ok(Client { config, brokers })
    }

    /// Sets `key` unless the connection URI already did (its options win).
    fn default(&mut self, key: &str, value: &str) {
        if self.config.get(key).is_none() {
            self.config.set(key, value);
        }
    }

    fn context(&self, ctx: &TaskContext) -> LogContext {
        LogContext {
            log: ctx.log.clone(),
            last_error: Arc::new(Mutex::new(None)),
        }
    }
}

/// `h1:9092,h2:9092` from `kafka://user:pass@h1:9092,h2:9092/…?…`: read from the raw URI,
/// so a comma-separated host list works wherever the connection URI is accepted.
fn authority_hosts(uri: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| {
            if h.contains(':') && !h.ends_with(']') {
                h.to_string()
            } else {
                format!("{h}:9092")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Routes librdkafka's log lines and errors to the try's log, and keeps the last error
/// for failure messages ("Connect to ipv4#127.0.0.1:9092 failed: Connection refused").
#[derive(Clone)]
struct LogContext {
    log: TryLog,
    last_error: Arc<Mutex<Option<String>>>,
}

impl LogContext {
    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let level = match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => "ERROR",
            RDKafkaLogLevel::Warning => "WARN",
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => "INFO",
            RDKafkaLogLevel::Debug => return,
        };
        self.log
            .line(level, "librdkafka", &format!("{fac}: {message}"));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log
            .line("WARN", "librdkafka", &format!("{error}: {reason}"));
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        // "1/1 brokers are down" follows the error that says why; keep the why.
        if last.is_none() || !reason.contains("brokers are down") {
            *last = Some(reason.to_string());
        }
    }
}

// For the metadata probe a consumer makes before joining its group.
impl ConsumerContext for LogContext {}

/// What a metadata fetch says about one topic.
#[derive(Debug, Clone)]
struct TopicInfo {
    name: String,
    /// False when the broker answered "unknown topic".
    exists: bool,
    partitions: Vec<i32>,
}

fn topic_infos(md: &Metadata, wanted: &[String]) -> Vec<TopicInfo> {
    wanted
        .iter()
        .map(|name| {
            let t = md.topics().iter().find(|t| t.name() == name);
            let partitions: Vec<i32> = t
                .map(|t| t.partitions().iter().map(|p| p.id()).collect())
                .unwrap_or_default();
            TopicInfo {
                name: name.clone(),
                exists: t.is_some_and(|t| t.error().is_none()) && !partitions.is_empty(),
                partitions,
            }
        })
        .collect()
}

/// Runs a blocking librdkafka call off the async threads, a few times with backoff,
/// and fails naming the brokers when it keeps failing. `what` says what was attempted.
async fn retry_blocking<T, F>(
    ctx: &TaskContext,
    lctx: &LogContext,
    brokers: &str,
    what: &str,
    f: F,
) -> Result<T, TaskError>
where
    F: Fn() -> KafkaResult<T> + Clone + Send + 'static,
    T: Send + 'static,
{
    let mut last = String::new();
    for attempt in 1..=CONNECT_ATTEMPTS {
        let call = tokio::task::spawn_blocking(f.clone());
        let res = tokio::select! {
            r = call => r,
            _ = ctx.cancel.cancelled() => return Err(TaskError::Cancelled),
        };
        match res {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => last = e.to_string(),
            Err(e) => last = e.to_string(),
        }
        ctx.log.warn(&format!(
            "{what} from Kafka at {brokers} failed (attempt {attempt}/{CONNECT_ATTEMPTS}): {last}"
        ));
        if attempt < CONNECT_ATTEMPTS {
            let pause = Duration::from_millis(500 * u64::from(attempt));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = ctx.cancel.cancelled() => return Err(TaskError::Cancelled),
            }
        }
    }
    let detail = lctx
        .last_error()
        .map(|e| format!(" (last client error: {e})"))
        .unwrap_or_default();
    Err(TaskError::Failed(format!(
        "cannot reach Kafka at {brokers}: {what} failed {CONNECT_ATTEMPTS} times: {last}{detail}"
    )))
}

/// `value` as a record key or payload: strings as their UTF-8 bytes, anything else as
/// JSON text.
fn value_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => s.as_bytes().to_vec(),
        other => serde_json::to_vec(other).unwrap_or_default(),
    }
}

/// Looks up a dotted path (`a.b.0.c`) in a record.
fn field<'a>(record: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(record, |v, part| match v {
        Value::Object(m) => m.get(part),
        Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// Reads an optional non-negative integer argument.
fn opt_u64(args: &Map<String, Value>, key: &str) -> Result<Option<u64>, TaskError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            TaskError::Fatal(format!(
                "`{key}` must be a non-negative integer, got {}",
                crate::short(v)
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_lists_come_from_the_uri_authority() {
        assert_eq!(authority_hosts("kafka://a:9092"), "a:9092");
        assert_eq!(
            authority_hosts("kafka://u:p@a:1,b:2/x?security.protocol=SSL"),
            "a:1,b:2"
        );
        assert_eq!(authority_hosts("kafka://broker"), "broker:9092");
    }

    #[test]
    fn dotted_paths_reach_nested_fields() {
        let r = serde_json::json!({"a": {"b": [1, {"c": "x"}]}});
        assert_eq!(field(&r, "a.b.1.c"), Some(&Value::String("x".into())));
        assert_eq!(field(&r, "a.z"), None);
    }
}

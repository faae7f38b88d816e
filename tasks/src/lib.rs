//! Task kinds behind one trait.
//!
//! A kind receives its arguments already rendered (templates resolved, `[defaults]`
//! merged) as a JSON object, writes what it does to the try's log, and returns a JSON
//! value — the XCom downstream tasks read. The executor owns everything around it:
//! claiming, timeouts, retries, recording.

pub mod conn;
mod crawl;
mod csv_kind;
mod es;
mod files;
mod http;
mod kafka;
mod log;
mod noop;
mod pg_write;
mod shell;
pub mod state;
mod steam;
pub mod vault;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use sluice_core::{KindKeys, KindRegistry, RecordTemplate};
use tokio_util::sync::CancellationToken;

pub use conn::{Connection, Connections, Masker, Secrets};
pub use log::TryLog;
pub use noop::Noop;
pub use shell::Shell;
pub use state::{EmptyState, MemoryState, MetricsSnapshot, StateBackend, TaskState, TryMetrics};
pub use vault::Vault;

/// Why a try failed. The variant decides what happens next.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The try failed; it is retried if the task has retries left.
    #[error("{0}")]
    Failed(String),
    /// The try cannot succeed by retrying (bad arguments): fail without retrying.
    #[error("{0}")]
    Fatal(String),
    /// The executor cancelled the try (timeout, shutdown, lease lost).
    #[error("cancelled")]
    Cancelled,
}

/// What a running try knows about itself.
pub struct TaskContext {
    pub dag_id: String,
    pub run_id: String,
    pub task_id: String,
    pub map_index: i64,
    pub try_number: i64,
    pub log: TryLog,
    /// Fires when the try must stop; kinds that wait on I/O or child processes select
    /// on it and clean up.
    pub cancel: CancellationToken,
    /// Named connections (`connection = "kafka_default"` in a task).
    pub conns: Connections,
    /// Durable state of this task (seen files, crawled URLs), committed with the run.
    pub state: Arc<TaskState>,
    /// Records and bytes read and written: kinds count what they move.
    pub metrics: TryMetrics,
    /// The try's template context, for keys the kind renders once per record
    /// ([`TaskKind::record_template_keys`]) with `record` added.
    pub template_context: minijinja::Value,
}

impl TaskContext {
    /// A context outside any run: no log file, no connections, empty state. For tests
    /// and tools; the executor builds real ones.
    pub fn detached(dag_id: &str, task_id: &str) -> TaskContext {
        TaskContext {
            dag_id: dag_id.to_string(),
            run_id: "detached".to_string(),
            task_id: task_id.to_string(),
            map_index: -1,
            try_number: 1,
            log: TryLog::discard(),
            cancel: CancellationToken::new(),
            conns: Connections::default(),
            state: Arc::new(TaskState::new(
                Arc::new(EmptyState),
                format!("{dag_id}.{task_id}"),
            )),
            metrics: TryMetrics::default(),
            template_context: minijinja::Value::from(()),
        }
    }

    /// Compiles the per-record template under `key`, if the task set one.
    pub fn record_template(
        &self,
        args: &Map<String, Value>,
        key: &str,
    ) -> Result<Option<RecordTemplate>, TaskError> {
        match opt_str(args, key)? {
            None => Ok(None),
            Some(src) => RecordTemplate::compile(src)
                .map(Some)
                .map_err(|e| TaskError::Fatal(format!("`{key}`: {e}"))),
        }
    }

    /// Renders a per-record template for record `i`; errors name the key and record.
    pub fn render_for_record(
        &self,
        template: &RecordTemplate,
        key: &str,
        i: usize,
        record: &Value,
    ) -> Result<Value, TaskError> {
        template
            .render(&self.template_context, record)
            .map_err(|e| TaskError::Fatal(format!("record {i}: `{key}`: {e}")))
    }
}

#[async_trait::async_trait]
pub trait TaskKind: Send + Sync + 'static {
    /// The `kind = "…"` name in DAG files.
    fn name(&self) -> &'static str;
    /// The kind's own keys, for validating DAG files before anything runs.
    fn keys(&self) -> KindKeys;
    /// Keys rendered once per record by the kind itself, with `record` in their
    /// templates; the executor passes them through unrendered.
    fn record_template_keys(&self) -> &'static [&'static str] {
        &[]
    }
    async fn run(&self, ctx: &TaskContext, args: Map<String, Value>) -> Result<Value, TaskError>;
}

/// The task kinds this build knows, by name.
#[derive(Clone)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn TaskKind>>,
}

impl Registry {
    pub fn empty() -> Self {
        Registry {
            kinds: BTreeMap::new(),
        }
    }

    /// Every built-in kind.
    pub fn builtin() -> Self {
        let mut r = Registry::empty();
        r.register(Arc::new(Noop));
        r.register(Arc::new(Shell));
        r.register(Arc::new(http::Http));
        r.register(Arc::new(steam::Steam));
        r.register(Arc::new(csv_kind::Csv));
        r.register(Arc::new(files::Files));
        r.register(Arc::new(es::EsIndex));
        r.register(Arc::new(pg_write::PgWrite));
        r.register(Arc::new(kafka::KafkaProduce));
        r.register(Arc::new(kafka::KafkaConsume));
        r.register(Arc::new(crawl::Crawl));
        r
    }

    pub fn register(&mut self, kind: Arc<dyn TaskKind>) {
        self.kinds.insert(kind.name(), kind);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn TaskKind>> {
        self.kinds.get(name)
    }
}

impl KindRegistry for Registry {
    fn kind_keys(&self, kind: &str) -> Option<KindKeys> {
        self.kinds.get(kind).map(|k| k.keys())
    }

    fn kind_names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }

    fn record_template_keys(&self, kind: &str) -> &'static [&'static str] {
        self.kinds
            .get(kind)
            .map(|k| k.record_template_keys())
            .unwrap_or(&[])
    }
}

/// Reads an optional string argument.
pub(crate) fn opt_str<'a>(
    args: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, TaskError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(TaskError::Fatal(format!(
            "`{key}` must be a string, got {}",
            short(other)
        ))),
    }
}

/// A value shortened for an error message.
pub fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

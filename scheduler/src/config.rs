//! Configuration: built-in defaults, then `sluice.toml`, then `SLUICE_*` environment
//! variables (nested keys with a double underscore: `SLUICE_SCHEDULER__LOOP_INTERVAL_MS`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Where the SQLite database, task logs and XCom artifacts live.
    pub home: PathBuf,
    /// `sqlite://PATH` or `postgres://USER@HOST/DB`; default: SQLite under `home`.
    pub database_url: Option<String>,
    pub dags_folder: PathBuf,
    /// Task instances one executor runs at once.
    pub parallelism: usize,
    /// XCom values larger than this (as JSON) go to the artifact store.
    pub xcom_inline_max_bytes: usize,
    /// Whether a DAG seen for the first time starts paused (Airflow's default: yes).
    pub dags_paused_at_creation: bool,
    pub scheduler: SchedulerConfig,
    /// Named connections: name → URI. `SLUICE_CONN_<NAME>` variables add and override.
    pub connections: std::collections::BTreeMap<String, String>,
    /// Named secrets: name → value. `SLUICE_SECRET_<NAME>` variables add and override.
    pub secrets: std::collections::BTreeMap<String, String>,
    /// Fernet key(s), comma-separated, that encrypt connections and secrets stored in
    /// the metadata store (`SLUICE_FERNET_KEY`). Never serialised.
    #[serde(skip_serializing)]
    pub fernet_key: Option<String>,
    /// Address the REST API listens on (`sluice web`, `sluice standalone`; `--host`).
    pub web_host: String,
    /// Port of the REST API (`SLUICE_WEB_PORT`, `--port`; 0 picks a free one).
    pub web_port: u16,
    /// Signs the API's tokens (`SLUICE_JWT_SECRET`). Default: a secret generated on
    /// first start and kept in the store, so every process of the installation agrees.
    #[serde(skip_serializing)]
    pub jwt_secret: Option<String>,
    /// Port of the Prometheus endpoint of `sluice scheduler` and `sluice worker`
    /// (`SLUICE_METRICS_PORT`, `--metrics-port`); none when unset. `sluice web` and
    /// `sluice standalone` serve `/metrics` on the API's port.
    pub metrics_port: Option<u16>,
    /// Address of that endpoint (`SLUICE_METRICS_HOST`); default: `web_host`.
    pub metrics_host: Option<String>,
    /// Whether `sluice scheduler` runs an executor too (`SLUICE_SCHEDULER_EXECUTOR`;
    /// false: tasks run only on `sluice worker` processes, as `--no-executor` says).
    pub scheduler_executor: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// Upper bound between two scheduling passes; completions and triggers wake it sooner.
    pub loop_interval_ms: u64,
    /// How often the DAG folder is checked for changed files.
    pub dag_refresh_interval_ms: u64,
    /// How often a worker proves it is alive and checks it still owns its tries.
    pub heartbeat_interval_ms: u64,
    /// A worker silent for this long is dead: its running tries are failed into retry.
    pub worker_timeout_ms: u64,
    /// On SIGTERM/Ctrl-C, how long running tries may finish before they are stopped
    /// and rescheduled.
    pub shutdown_grace_ms: u64,
    /// How long to keep retrying an unreachable database at start.
    pub db_connect_patience_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        let home = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".sluice"))
            .unwrap_or_else(|| PathBuf::from(".sluice"));
        Config {
            home,
            database_url: None,
            dags_folder: PathBuf::from("dags"),
            parallelism: 32,
            xcom_inline_max_bytes: 64 * 1024,
            dags_paused_at_creation: true,
            scheduler: SchedulerConfig::default(),
            connections: Default::default(),
            secrets: Default::default(),
            fernet_key: None,
            web_host: "127.0.0.1".to_string(),
            web_port: 8080,
            jwt_secret: None,
            metrics_port: None,
            metrics_host: None,
            scheduler_executor: true,
        }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            loop_interval_ms: 1000,
            dag_refresh_interval_ms: 5000,
            heartbeat_interval_ms: 5000,
            worker_timeout_ms: 30_000,
            shutdown_grace_ms: 30_000,
            db_connect_patience_ms: 60_000,
        }
    }
}

impl SchedulerConfig {
    pub fn loop_interval(&self) -> Duration {
        Duration::from_millis(self.loop_interval_ms.max(10))
    }
    pub fn dag_refresh_interval(&self) -> Duration {
        Duration::from_millis(self.dag_refresh_interval_ms.max(100))
    }
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.max(50))
    }
    pub fn worker_timeout(&self) -> Duration {
        Duration::from_millis(self.worker_timeout_ms.max(100))
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
    pub fn db_connect_patience(&self) -> Duration {
        Duration::from_millis(self.db_connect_patience_ms)
    }
}

impl Config {
    /// Loads the configuration: `explicit` file if given (it must exist), else
    /// `$SLUICE_CONFIG`, else `./sluice.toml` or `$SLUICE_HOME/sluice.toml` when present.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        let file = match explicit {
            Some(p) => {
                anyhow::ensure!(p.is_file(), "config file {} does not exist", p.display());
                Some(p.to_path_buf())
            }
            None => std::env::var_os("SLUICE_CONFIG")
                .map(PathBuf::from)
                .or_else(|| {
                    let local = PathBuf::from("sluice.toml");
                    local.is_file().then_some(local)
                })
                .or_else(|| {
                    let home = std::env::var_os("SLUICE_HOME")?;
                    let p = PathBuf::from(home).join("sluice.toml");
                    p.is_file().then_some(p)
                }),
        };
        if let Some(file) = &file {
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(
            Env::prefixed("SLUICE_")
                .ignore(&["CONFIG"])
                .filter(|k| !k.as_str().starts_with("conn_") && !k.as_str().starts_with("secret_"))
                .split("__"),
        );
        let cfg: Config = figment.extract().map_err(|e| {
            anyhow::anyhow!(
                "bad configuration{}: {e}",
                file.as_ref()
                    .map(|f| format!(" (file {})", f.display()))
                    .unwrap_or_default()
            )
        })?;
        anyhow::ensure!(cfg.parallelism >= 1, "parallelism must be at least 1");
        Ok(cfg)
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| format!("sqlite://{}", self.home.join("sluice.db").display()))
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.home.join("logs")
    }

    pub fn artifacts_dir(&self) -> PathBuf {
        self.home.join("artifacts")
    }
}

//! `sluice connections …` and `sluice secrets …`: credentials kept encrypted in the
//! metadata store. Listings show where each one comes from and never a password or a
//! secret value.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::Subcommand;
use serde_json::{json, Value};
use sluice_store::Store;
use sluice_tasks::{Connection, Connections, Vault};

use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum ConnectionsCommand {
    /// Store a connection, encrypted with SLUICE_FERNET_KEY (replaces one of that name).
    Add {
        name: String,
        /// The connection URI, e.g. `postgres://user:pass@db:5432/app`,
        /// `kafka://broker:9092?security.protocol=SSL`, `redis://cache:6379/0`.
        #[arg(long = "conn-uri", visible_alias = "uri")]
        conn_uri: String,
        #[arg(long = "conn-description", visible_alias = "description")]
        conn_description: Option<String>,
    },
    /// Every connection a task can use, from the environment, sluice.toml and the store.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One connection, password hidden.
    Get {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a stored connection.
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Store a secret, encrypted with SLUICE_FERNET_KEY. Without --value the value is
    /// read from standard input, which keeps it out of the shell history.
    Set {
        name: String,
        #[arg(long)]
        value: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Secret names and where each comes from (never their values).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a stored secret.
    Delete { name: String },
    /// Print a new Fernet key for SLUICE_FERNET_KEY.
    GenerateKey,
}

fn vault(cfg: &Config) -> anyhow::Result<Vault> {
    crate::credentials::vault(cfg.fernet_key.as_deref())
        .map_err(anyhow::Error::msg)?
        .ok_or_else(|| {
            anyhow!(
                "storing connections and secrets needs an encryption key: set {} (generate one with `sluice secrets generate-key`) and keep it — without it they cannot be read back",
                sluice_tasks::vault::KEY_VARIABLE
            )
        })
}

fn check_name(what: &str, name: &str) -> anyhow::Result<String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        bail!("{what} name `{name}` may hold only letters, digits, `_` and `-`");
    }
    Ok(name.to_lowercase())
}

fn env_var(prefix: &str, name: &str) -> String {
    format!("{prefix}{}", name.to_uppercase())
}

fn describe(c: &Connection, source: &str, description: Option<&str>) -> Value {
    json!({
        "conn_id": c.name,
        "conn_type": c.conn_type,
        "host": c.host,
        "port": c.port,
        "login": c.login,
        "schema": c.schema,
        "extra": c.extra,
        "description": description,
        "uri": c.redacted_uri(),
        "source": source,
    })
}

/// Every visible connection with its source, as JSON rows (passwords hidden).
async fn all_connections(cfg: &Config, store: &Store) -> anyhow::Result<Vec<Value>> {
    let base = Connections::load(&cfg.connections).map_err(anyhow::Error::msg)?;
    let mut rows: BTreeMap<String, Value> = BTreeMap::new();
    for name in base.names() {
        let c = base.get(&name).map_err(|e| anyhow!("{e}"))?;
        let source = if std::env::var_os(env_var("SLUICE_CONN_", &name)).is_some() {
            "env"
        } else {
            "sluice.toml"
        };
        rows.insert(name.clone(), describe(c, source, None));
    }
    let stored = store.stored_connections().await?;
    let key = crate::credentials::vault(cfg.fernet_key.as_deref()).map_err(anyhow::Error::msg)?;
    for s in stored {
        if rows.contains_key(&s.conn_id) {
            continue; // shadowed by the environment or sluice.toml
        }
        let parsed = key
            .as_ref()
            .ok_or_else(|| "no SLUICE_FERNET_KEY to decrypt it".to_string())
            .and_then(|v| v.decrypt(&s.uri_encrypted))
            .and_then(|uri| Connection::parse(&s.conn_id, &uri));
        let row = match parsed {
            Ok(c) => describe(&c, "store", s.description.as_deref()),
            Err(e) => json!({
                "conn_id": s.conn_id,
                "conn_type": s.conn_type,
                "description": s.description,
                "source": "store",
                "error": e,
            }),
        };
        rows.insert(s.conn_id.clone(), row);
    }
    Ok(rows.into_values().collect())
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub async fn connections(cfg: &Config, cmd: ConnectionsCommand) -> anyhow::Result<ExitCode> {
    let store = crate::open_store(cfg).await?;
    match cmd {
        ConnectionsCommand::Add {
            name,
            conn_uri,
            conn_description,
        } => {
            let name = check_name("connection", &name)?;
            let parsed = Connection::parse(&name, &conn_uri).map_err(anyhow::Error::msg)?;
            let vault = vault(cfg)?;
            store
                .put_connection(
                    &name,
                    &parsed.conn_type,
                    conn_description.as_deref(),
                    &vault.encrypt(&conn_uri),
                )
                .await?;
            println!("Connection {name} stored ({}).", parsed.redacted_uri());
            if std::env::var_os(env_var("SLUICE_CONN_", &name)).is_some()
                || cfg
                    .connections
                    .keys()
                    .any(|k| k.eq_ignore_ascii_case(&name))
            {
                println!(
                    "Note: {} or sluice.toml also defines {name}, and wins over the stored one.",
                    env_var("SLUICE_CONN_", &name)
                );
            }
        }
        ConnectionsCommand::List { json } => {
            let rows = all_connections(cfg, &store).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let table: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            text(&r["conn_id"]),
                            text(&r["conn_type"]),
                            text(&r["source"]),
                            if r["error"].is_null() {
                                text(&r["uri"])
                            } else {
                                format!("(cannot read: {})", text(&r["error"]))
                            },
                        ]
                    })
                    .collect();
                crate::cli::table(&["conn_id", "type", "source", "uri"], &table);
            }
        }
        ConnectionsCommand::Get { name, json } => {
            let rows = all_connections(cfg, &store).await?;
            let Some(row) = rows
                .into_iter()
                .find(|r| r["conn_id"].as_str() == Some(name.to_lowercase().as_str()))
            else {
                bail!("connection {name} is not defined");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&row)?);
            } else if let Some(obj) = row.as_object() {
                for (k, v) in obj {
                    if !v.is_null() {
                        println!("{k:<12} {}", text(v));
                    }
                }
            }
        }
        ConnectionsCommand::Delete { name } => {
            if !store.delete_connection(&name.to_lowercase()).await? {
                bail!("connection {name} is not in the store");
            }
            println!("Connection {name} deleted from the store.");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn secrets(cfg: &Config, cmd: SecretsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SecretsCommand::GenerateKey => println!("{}", Vault::generate_key()),
        SecretsCommand::Set {
            name,
            value,
            description,
        } => {
            let name = check_name("secret", &name)?;
            let value = match value {
                Some(v) => v,
                None => {
                    let mut buf = String::new();
                    std::io::stdin().read_to_string(&mut buf)?;
                    buf.strip_suffix('\n')
                        .map(|s| s.strip_suffix('\r').unwrap_or(s))
                        .unwrap_or(&buf)
                        .to_string()
                }
            };
            if value.is_empty() {
                bail!("secret {name}: the value is empty");
            }
            let vault = vault(cfg)?;
            let store = crate::open_store(cfg).await?;
            store
                .put_secret(&name, &vault.encrypt(&value), description.as_deref())
                .await?;
            println!("Secret {name} stored.");
        }
        SecretsCommand::List { json } => {
            let store = crate::open_store(cfg).await?;
            let mut rows: BTreeMap<String, Value> = BTreeMap::new();
            for s in store.stored_secrets().await? {
                rows.insert(
                    s.name.clone(),
                    json!({"name": s.name, "source": "store", "description": s.description,
                           "updated_at": s.updated_at.to_rfc3339()}),
                );
            }
            for name in sluice_tasks::Secrets::load(&cfg.secrets).names() {
                let source = if std::env::var_os(env_var("SLUICE_SECRET_", &name)).is_some() {
                    "env"
                } else {
                    "sluice.toml"
                };
                rows.insert(name.clone(), json!({"name": name, "source": source}));
            }
            let rows: Vec<Value> = rows.into_values().collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let table: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            text(&r["name"]),
                            text(&r["source"]),
                            text(&r["description"]),
                        ]
                    })
                    .collect();
                crate::cli::table(&["name", "source", "description"], &table);
            }
        }
        SecretsCommand::Delete { name } => {
            let store = crate::open_store(cfg).await?;
            if !store.delete_secret(&name.to_lowercase()).await? {
                bail!("secret {name} is not in the store");
            }
            println!("Secret {name} deleted from the store.");
        }
    }
    Ok(ExitCode::SUCCESS)
}

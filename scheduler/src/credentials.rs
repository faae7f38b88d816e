//! What a worker needs to reach the outside world — connections and secrets — merged
//! from their three sources: `SLUICE_CONN_*` / `SLUICE_SECRET_*` variables, then
//! `sluice.toml`, then the metadata store (encrypted, added with `sluice connections
//! add` / `sluice secrets set`). The first source that names a connection wins.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_store::Store;
use sluice_tasks::{Connection, Connections, Masker, Secrets, Vault};

use crate::checkpoints::Checkpoints;

/// A consistent set of credentials, swapped whole when the store's copy changes.
pub struct Credentials {
    pub connections: Connections,
    pub secrets: Secrets,
    /// Hides every secret value and connection password.
    pub masker: Masker,
    pub checkpoints: Arc<Checkpoints>,
}

impl Credentials {
    pub fn new(store: &Store, connections: Connections, secrets: Secrets) -> Credentials {
        let masker = Masker::new(secrets.values().into_iter().chain(connections.passwords()));
        let checkpoints = Arc::new(Checkpoints::new(store.clone(), &connections));
        Credentials {
            connections,
            secrets,
            masker,
            checkpoints,
        }
    }
}

/// The vault for the configured key, if one is configured.
pub fn vault(fernet_key: Option<&str>) -> Result<Option<Vault>, String> {
    fernet_key
        .filter(|k| !k.trim().is_empty())
        .map(Vault::new)
        .transpose()
}

/// `base` (environment and sluice.toml) completed with what the store holds. Stored
/// entries need the key that encrypted them; without it, or with a wrong one, this
/// fails naming the entry rather than running tasks without their credentials.
pub async fn load(
    store: &Store,
    base_connections: &Connections,
    base_secrets: &Secrets,
    vault: Option<&Vault>,
) -> Result<Credentials, String> {
    let stored_conns = store
        .stored_connections()
        .await
        .map_err(|e| format!("cannot read stored connections: {e}"))?;
    let stored_secrets = store
        .stored_secrets()
        .await
        .map_err(|e| format!("cannot read stored secrets: {e}"))?;
    if stored_conns.is_empty() && stored_secrets.is_empty() {
        return Ok(Credentials::new(
            store,
            base_connections.clone(),
            base_secrets.clone(),
        ));
    }
    let Some(vault) = vault else {
        return Err(format!(
            "the store holds {} connection(s) and {} secret(s) encrypted, but no key is configured: set {} (or fernet_key in sluice.toml) to the key they were stored with",
            stored_conns.len(),
            stored_secrets.len(),
            sluice_tasks::vault::KEY_VARIABLE
        ));
    };
    let mut conns = Vec::with_capacity(stored_conns.len());
    for c in stored_conns {
        let uri = vault
            .decrypt(&c.uri_encrypted)
            .map_err(|e| format!("stored connection `{}`: {e}", c.conn_id))?;
        conns.push(
            Connection::parse(&c.conn_id, &uri)
                .map_err(|e| format!("stored connection `{}`: {e}", c.conn_id))?,
        );
    }
    let mut secrets = BTreeMap::new();
    for s in stored_secrets {
        let value = vault
            .decrypt(&s.value_encrypted)
            .map_err(|e| format!("stored secret `{}`: {e}", s.name))?;
        secrets.insert(s.name, value);
    }
    Ok(Credentials::new(
        store,
        base_connections.with_stored(conns),
        base_secrets.with_stored(secrets),
    ))
}

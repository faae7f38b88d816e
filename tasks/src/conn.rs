//! Named connections and secrets, resolved outside DAG files, and the masker that keeps
//! secret values out of logs and error messages.
//!
//! Connections come from `SLUICE_CONN_<NAME>` environment variables holding a URI
//! (`kafka://broker:9092?security.protocol=SSL`, `https://user:pass@es:9200`,
//! `postgres://…`, `redis://…`) or from the `[connections]` table of `sluice.toml`.
//! Secrets come from `SLUICE_SECRET_<NAME>` or `[secrets]`. Names are case-insensitive
//! and stored lower-case (`SLUICE_CONN_KAFKA_DEFAULT` is `kafka_default`).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::TaskError;

/// A parsed connection URI.
#[derive(Clone)]
pub struct Connection {
    pub name: String,
    /// The URI scheme: `kafka`, `https`, `postgres`, `redis`, …
    pub conn_type: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub login: Option<String>,
    pub password: Option<String>,
    /// The path without its leading `/` (a database name, an index prefix, …).
    pub schema: Option<String>,
    /// Query parameters (client options such as `security.protocol`).
    pub extra: BTreeMap<String, String>,
    uri: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("name", &self.name)
            .field("uri", &self.redacted_uri())
            .finish()
    }
}

impl Connection {
    pub fn parse(name: &str, uri: &str) -> Result<Connection, String> {
        // A broker list (`kafka://h1:9092,h2:9092`) is not a valid URI authority:
        // parse with the first host and keep the whole list as `bootstrap.servers`.
        if let Some((scheme, rest)) = uri.trim().split_once("://") {
            let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(auth_end);
            let (userinfo, hosts) = match authority.rsplit_once('@') {
                Some((u, h)) => (Some(u), h),
                None => (None, authority),
            };
            if hosts.contains(',') {
                let first = hosts.split(',').next().unwrap_or_default();
                let single = match userinfo {
                    Some(u) => format!("{scheme}://{u}@{first}{tail}"),
                    None => format!("{scheme}://{first}{tail}"),
                };
                let mut conn = Connection::parse(name, &single)?;
                conn.extra
                    .entry("bootstrap.servers".to_string())
                    .or_insert_with(|| hosts.to_string());
                conn.uri = uri.trim().to_string();
                return Ok(conn);
            }
        }
        let parsed = url::Url::parse(uri.trim()).map_err(|e| {
            format!("connection {name}: not a URI ({e}); expected e.g. kafka://host:9092 or https://user:pass@host:9200")
        })?;
        let decode = |s: &str| percent_decode(s);
        let login = (!parsed.username().is_empty()).then(|| decode(parsed.username()));
        let password = parsed.password().map(decode);
        let schema = parsed.path().trim_start_matches('/').to_string();
        Ok(Connection {
            name: name.to_lowercase(),
            conn_type: parsed.scheme().to_string(),
            host: parsed.host_str().map(str::to_string),
            port: parsed.port(),
            login,
            password,
            schema: (!schema.is_empty()).then_some(schema),
            extra: parsed
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
            uri: uri.trim().to_string(),
        })
    }

    /// The URI as configured, password included: for handing to a client library only.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The URI with the password replaced by `***`, for messages.
    pub fn redacted_uri(&self) -> String {
        match url::Url::parse(&self.uri) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            Ok(_) => self.uri.clone(),
            // Not a plain URI (a broker list): hide the whole user part.
            Err(_) => match self.uri.split_once("://") {
                Some((scheme, rest)) if rest.contains('@') => {
                    let host = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
                    format!("{scheme}://***@{host}")
                }
                _ => self.uri.clone(),
            },
        }
    }

    /// `host:port`, with `default_port` when the URI has none.
    pub fn host_port(&self, default_port: u16) -> String {
        format!(
            "{}:{}",
            self.host.as_deref().unwrap_or("localhost"),
            self.port.unwrap_or(default_port)
        )
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Named connections.
#[derive(Clone, Default, Debug)]
pub struct Connections {
    map: Arc<BTreeMap<String, Connection>>,
}

/// Named secret values (templates read them as `{{ secrets.NAME }}`).
#[derive(Clone, Default)]
pub struct Secrets {
    map: Arc<BTreeMap<String, String>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.map.keys()).finish()
    }
}

/// Reads `PREFIX<NAME>=value` pairs from the environment, names lower-cased.
fn env_pairs(prefix: &str) -> BTreeMap<String, String> {
    std::env::vars()
        .filter_map(|(k, v)| {
            k.strip_prefix(prefix)
                .filter(|n| !n.is_empty())
                .map(|n| (n.to_lowercase(), v))
        })
        .collect()
}

impl Connections {
    /// `configured` (from sluice.toml) overlaid by `SLUICE_CONN_*` variables.
    pub fn load(configured: &BTreeMap<String, String>) -> Result<Connections, String> {
        let mut uris: BTreeMap<String, String> = configured
            .iter()
            .map(|(k, v)| (k.to_lowercase(), v.clone()))
            .collect();
        uris.extend(env_pairs("SLUICE_CONN_"));
        let mut map = BTreeMap::new();
        for (name, uri) in uris {
            map.insert(name.clone(), Connection::parse(&name, &uri)?);
        }
        Ok(Connections { map: Arc::new(map) })
    }

    /// These connections plus `stored` ones (from the metadata store) whose names are
    /// not defined here: sluice.toml and the environment win over the store.
    pub fn with_stored(&self, stored: Vec<Connection>) -> Connections {
        let mut map = (*self.map).clone();
        for c in stored {
            map.entry(c.name.clone()).or_insert(c);
        }
        Connections { map: Arc::new(map) }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(&name.to_lowercase())
    }

    pub fn from_list(list: Vec<Connection>) -> Connections {
        Connections {
            map: Arc::new(list.into_iter().map(|c| (c.name.clone(), c)).collect()),
        }
    }

    /// The connection, or a fatal error saying how to define it.
    pub fn get(&self, name: &str) -> Result<&Connection, TaskError> {
        self.map.get(&name.to_lowercase()).ok_or_else(|| {
            TaskError::Fatal(format!(
                "connection `{name}` is not defined: set SLUICE_CONN_{} to its URI, add it under [connections] in sluice.toml, or store it with `sluice connections add {name} --conn-uri URI`",
                name.to_uppercase()
            ))
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }

    /// Passwords of all connections, for the masker.
    pub fn passwords(&self) -> Vec<String> {
        self.map
            .values()
            .filter_map(|c| c.password.clone())
            .collect()
    }
}

impl Secrets {
    /// `configured` overlaid by `SLUICE_SECRET_*` variables.
    pub fn load(configured: &BTreeMap<String, String>) -> Secrets {
        let mut map: BTreeMap<String, String> = configured
            .iter()
            .map(|(k, v)| (k.to_lowercase(), v.clone()))
            .collect();
        map.extend(env_pairs("SLUICE_SECRET_"));
        Secrets { map: Arc::new(map) }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(&name.to_lowercase()).map(String::as_str)
    }

    /// These secrets plus `stored` ones whose names are not defined here.
    pub fn with_stored(&self, stored: BTreeMap<String, String>) -> Secrets {
        let mut map = (*self.map).clone();
        for (k, v) in stored {
            map.entry(k.to_lowercase()).or_insert(v);
        }
        Secrets { map: Arc::new(map) }
    }

    pub fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }

    /// Name → value, with names as written in templates: both the lower-case name and
    /// the upper-case one resolve (`secrets.STEAM_API_KEY`, `secrets.steam_api_key`).
    pub fn for_templates(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, v) in self.map.iter() {
            out.insert(k.clone(), v.clone());
            out.insert(k.to_uppercase(), v.clone());
        }
        out
    }

    pub fn values(&self) -> Vec<String> {
        self.map.values().cloned().collect()
    }
}

/// Replaces known secret values with `***`.
#[derive(Clone, Default)]
pub struct Masker {
    values: Arc<Vec<String>>,
}

/// Secret values shorter than this are not masked: masking `1` or `ab` everywhere would
/// make logs unreadable and reveal nothing worth hiding.
const MIN_MASKED_LEN: usize = 4;

impl Masker {
    pub fn new(values: impl IntoIterator<Item = String>) -> Masker {
        let mut values: Vec<String> = values
            .into_iter()
            .filter(|v| v.len() >= MIN_MASKED_LEN)
            .collect();
        // Longest first, so a secret containing another is masked whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Masker {
            values: Arc::new(values),
        }
    }

    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in self.values.iter() {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), "***");
            }
        }
        out
    }

    /// `value` with every string in it masked (keys too), so a secret is hidden
    /// whatever JSON escaping its text would get.
    pub fn mask_json(&self, value: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::String(s) => Value::String(self.mask(s)),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.mask_json(v)).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (self.mask(k), self.mask_json(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uris_with_credentials_and_options() {
        let c = Connection::parse(
            "ES_Default",
            "https://elastic:p%40ss@es.local:9200/logs?verify=false",
        )
        .expect("parses");
        assert_eq!(c.name, "es_default");
        assert_eq!(c.conn_type, "https");
        assert_eq!(c.host.as_deref(), Some("es.local"));
        assert_eq!(c.port, Some(9200));
        assert_eq!(c.login.as_deref(), Some("elastic"));
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert_eq!(c.schema.as_deref(), Some("logs"));
        assert_eq!(c.extra.get("verify").map(String::as_str), Some("false"));
        assert!(!format!("{c:?}").contains("p%40ss"));
        assert_eq!(c.host_port(1), "es.local:9200");
        assert!(Connection::parse("x", "not a uri").is_err());
    }

    #[test]
    fn broker_lists_become_bootstrap_servers() {
        let c = Connection::parse("k", "kafka://u:pw@b1:9092,b2:9093?client.id=x").expect("parses");
        assert_eq!(c.host.as_deref(), Some("b1"));
        assert_eq!(
            c.extra.get("bootstrap.servers").map(String::as_str),
            Some("b1:9092,b2:9093")
        );
        assert_eq!(c.extra.get("client.id").map(String::as_str), Some("x"));
        assert_eq!(c.password.as_deref(), Some("pw"));
    }

    #[test]
    fn unknown_connection_is_a_fatal_error_saying_how_to_define_it() {
        let conns = Connections::from_list(vec![]);
        let err = conns.get("kafka_default").expect_err("missing");
        assert!(
            matches!(&err, TaskError::Fatal(m) if m.contains("SLUICE_CONN_KAFKA_DEFAULT")),
            "{err}"
        );
    }

    #[test]
    fn masker_masks_strings_inside_json_whatever_their_escaping() {
        let m = Masker::new(["p\"ss\\word".to_string()]);
        let v = serde_json::json!({"url": "https://x/?k=p\"ss\\word", "n": [1, "p\"ss\\word"]});
        let masked = m.mask_json(&v);
        assert_eq!(
            masked,
            serde_json::json!({"url": "https://x/?k=***", "n": [1, "***"]})
        );
        assert!(!masked.to_string().contains("ss\\\\word"));
    }

    #[test]
    fn masker_hides_longest_first_and_skips_tiny_values() {
        let m = Masker::new(vec!["abc".into(), "s3cret".into(), "s3cret-key".into()]);
        assert_eq!(
            m.mask("key=s3cret-key other=s3cret abc"),
            "key=*** other=*** abc"
        );
    }
}

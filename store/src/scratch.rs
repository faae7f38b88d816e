//! PostgreSQL databases that exist for one test or benchmark run: created beside the
//! server's admin database, dropped when done. Names start with a prefix that `.ci/run`
//! sweeps (`sluice_t_`, `sluice_bench_`) in case a run was interrupted.

use sqlx::Connection;

use crate::{redact_url, Result, StoreError};

/// `postgres://u@h:5432/olddb?x=y` → `postgres://u@h:5432/NEW?x=y`.
pub fn with_database_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{name}?{q}"),
        None => format!("{host_part}/{name}"),
    }
}

/// A database created on the server of `admin_url`; `url` points at it.
pub struct ScratchDatabase {
    pub url: String,
    pub name: String,
    admin_url: String,
}

impl ScratchDatabase {
    /// Creates `{prefix}{random}` on the server `admin_url` connects to.
    pub async fn create(admin_url: &str, prefix: &str) -> Result<ScratchDatabase> {
        let name = format!("{prefix}{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .map_err(|cause| StoreError::Connect {
                url: redact_url(admin_url),
                cause,
            })?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        let _ = admin.close().await;
        Ok(ScratchDatabase {
            url: with_database_name(admin_url, &name),
            name,
            admin_url: admin_url.to_string(),
        })
    }

    /// Drops the database, disconnecting anyone still on it.
    pub async fn drop_database(self) -> Result<()> {
        let mut admin = sqlx::PgConnection::connect(&self.admin_url)
            .await
            .map_err(|cause| StoreError::Connect {
                url: redact_url(&self.admin_url),
                cause,
            })?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await?;
        let _ = admin.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_database_name_only() {
        use super::with_database_name as w;
        assert_eq!(
            w("postgres://u@h:5432/postgres?sslmode=disable", "x"),
            "postgres://u@h:5432/x?sslmode=disable"
        );
        assert_eq!(w("postgres://u@h/db", "x"), "postgres://u@h/x");
        assert_eq!(w("postgres://u@h", "x"), "postgres://u@h/x");
    }
}

//! Connections and secrets kept in the store. Values arrive and leave encrypted: the
//! store never sees a password or secret in clear (see `sluice_tasks::Vault`).

use chrono::{DateTime, Utc};

use crate::{now, with_pool, Result, Store};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct StoredConnection {
    pub conn_id: String,
    pub conn_type: String,
    pub description: Option<String>,
    pub uri_encrypted: String,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct StoredSecret {
    pub name: String,
    pub value_encrypted: String,
    pub description: Option<String>,
    pub updated_at: DateTime<Utc>,
}

impl Store {
    pub async fn stored_connections(&self) -> Result<Vec<StoredConnection>> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as::<_, StoredConnection>(
                "SELECT conn_id, conn_type, description, uri_encrypted, updated_at \
                 FROM connection ORDER BY conn_id",
            )
            .fetch_all(pool)
            .await?
        }))
    }

    /// Adds or replaces a connection.
    pub async fn put_connection(
        &self,
        conn_id: &str,
        conn_type: &str,
        description: Option<&str>,
        uri_encrypted: &str,
    ) -> Result<()> {
        with_pool!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO connection (conn_id, conn_type, description, uri_encrypted, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (conn_id) DO UPDATE SET \
                 conn_type = excluded.conn_type, description = excluded.description, \
                 uri_encrypted = excluded.uri_encrypted, updated_at = excluded.updated_at",
            )
            .bind(conn_id)
            .bind(conn_type)
            .bind(description)
            .bind(uri_encrypted)
            .bind(now())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn delete_connection(&self, conn_id: &str) -> Result<bool> {
        let n = with_pool!(&self.db, pool => {
            sqlx::query("DELETE FROM connection WHERE conn_id = $1")
                .bind(conn_id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    pub async fn stored_secrets(&self) -> Result<Vec<StoredSecret>> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as::<_, StoredSecret>(
                "SELECT name, value_encrypted, description, updated_at FROM secret ORDER BY name",
            )
            .fetch_all(pool)
            .await?
        }))
    }

    /// Adds or replaces a secret.
    pub async fn put_secret(
        &self,
        name: &str,
        value_encrypted: &str,
        description: Option<&str>,
    ) -> Result<()> {
        with_pool!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO secret (name, value_encrypted, description, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET \
                 value_encrypted = excluded.value_encrypted, \
                 description = COALESCE(excluded.description, secret.description), \
                 updated_at = excluded.updated_at",
            )
            .bind(name)
            .bind(value_encrypted)
            .bind(description)
            .bind(now())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn delete_secret(&self, name: &str) -> Result<bool> {
        let n = with_pool!(&self.db, pool => {
            sqlx::query("DELETE FROM secret WHERE name = $1")
                .bind(name)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    /// A value that changes whenever a stored connection or secret is added, changed
    /// or removed: workers poll it to reload credentials without a restart.
    pub async fn credentials_stamp(&self) -> Result<String> {
        let (c, cmax, s, smax): (i64, Option<String>, i64, Option<String>) = with_pool!(&self.db, pool => {
            sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM connection), \
                 (SELECT CAST(MAX(updated_at) AS TEXT) FROM connection), \
                 (SELECT COUNT(*) FROM secret), \
                 (SELECT CAST(MAX(updated_at) AS TEXT) FROM secret)",
            )
            .fetch_one(pool)
            .await?
        });
        Ok(format!(
            "{c}:{}:{s}:{}",
            cmax.unwrap_or_default(),
            smax.unwrap_or_default()
        ))
    }
}

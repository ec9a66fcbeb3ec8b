//! Per-schema SQL migrations: `migrations/<service>/NNNN_name.sql`, embedded at
//! build time, applied once each, in order, each in its own transaction, as
//! the owner role, recorded with a checksum in `mosaic_meta.schema_migrations`.
//! A session advisory lock makes two processes starting at once take turns.

use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};

use crate::bootstrap::OWNER_ROLE;

/// The embedded migrations of one schema (from `sqlx::migrate!`, used only to embed files).
pub type Migrations = sqlx::migrate::Migrator;

/// A service's schema, its runtime role and its migrations.
#[derive(Debug, Clone, Copy)]
pub struct ServiceSchema {
    /// Service and schema name, e.g. `identity`.
    pub name: &'static str,
    /// The runtime role, e.g. `mosaic_identity`.
    pub role: &'static str,
    /// Extra NOLOGIN roles the runtime role may `SET ROLE` to (identity's platform role).
    pub extra_roles: &'static [&'static str],
    pub migrations: &'static Migrations,
}

const LOCK_KEY: i64 = 0x6d6f_7361_6963; // "mosaic"

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration {schema}/{version} was changed after it was applied (checksum differs)")]
    Changed { schema: String, version: i64 },
    #[error("migration {schema}/{version} failed: {source}")]
    Failed {
        schema: String,
        version: i64,
        source: sqlx::Error,
    },
}

/// Applies what is missing; returns `(schema, version)` of each migration applied now.
/// `conn` must be able to `SET ROLE` to the owner role (a superuser or a member).
pub async fn migrate(
    conn: &mut PgConnection,
    schemas: &[ServiceSchema],
) -> Result<Vec<(String, i64)>, MigrateError> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await?;
    let result = apply_all(conn, schemas).await;
    let unlock = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn apply_all(
    conn: &mut PgConnection,
    schemas: &[ServiceSchema],
) -> Result<Vec<(String, i64)>, MigrateError> {
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA IF NOT EXISTS mosaic_meta AUTHORIZATION {OWNER_ROLE}; \
         CREATE TABLE IF NOT EXISTS mosaic_meta.schema_migrations ( \
            schema_name text NOT NULL, \
            version bigint NOT NULL, \
            name text NOT NULL, \
            checksum bytea NOT NULL, \
            applied_at timestamptz NOT NULL DEFAULT now(), \
            PRIMARY KEY (schema_name, version)); \
         ALTER TABLE mosaic_meta.schema_migrations OWNER TO {OWNER_ROLE};"
    ))
    .execute(&mut *conn)
    .await?;

    let mut applied = Vec::new();
    for schema in schemas {
        for m in schema.migrations.iter() {
            let checksum = Sha256::digest(m.sql.as_bytes()).to_vec();
            let recorded: Option<Vec<u8>> = sqlx::query_scalar(
                "SELECT checksum FROM mosaic_meta.schema_migrations WHERE schema_name = $1 AND version = $2",
            )
            .bind(schema.name)
            .bind(m.version)
            .fetch_optional(&mut *conn)
            .await?;
            match recorded {
                Some(c) if c == checksum => continue,
                Some(_) => {
                    return Err(MigrateError::Changed {
                        schema: schema.name.to_owned(),
                        version: m.version,
                    });
                }
                None => {}
            }
            let failed = |source| MigrateError::Failed {
                schema: schema.name.to_owned(),
                version: m.version,
                source,
            };
            let mut tx = conn.begin().await?;
            // Objects belong to the owner role, and unqualified names land in the service schema.
            sqlx::raw_sql(&format!(
                "SET LOCAL ROLE {OWNER_ROLE}; SET LOCAL search_path = {}, public",
                schema.name
            ))
            .execute(&mut *tx)
            .await?;
            sqlx::raw_sql(&m.sql)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            sqlx::query(
                "INSERT INTO mosaic_meta.schema_migrations (schema_name, version, name, checksum) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(schema.name)
            .bind(m.version)
            .bind(&*m.description)
            .bind(&checksum)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(schema = schema.name, version = m.version, name = %m.description, "migration applied");
            applied.push((schema.name.to_owned(), m.version));
        }
    }
    Ok(applied)
}

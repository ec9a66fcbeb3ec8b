//! Per-schema SQL migrations: `migrations/<service>/NNNN_name.sql`, embedded at
//! build time, applied once each, in order, each in its own transaction, as
//! the owner role, recorded with a checksum in `mosaic_meta.schema_migrations`.
//! A session advisory lock makes two processes starting at once take turns.
//!
//! The migrator provides what this crate's own code relies on, so that no
//! service writes it again:
//! - `mosaic_meta.fence(table)` (`sql/fence.sql`): row-level security with
//!   the tenant policy, in one line of a migration;
//! - version 0 of every schema, the base (`sql/base.sql`): `audit_events`
//!   and `idempotency_keys`, the tables of [`crate::audit`] and
//!   [`crate::idempotency`].
//!
//! An applied migration never changes. The one exception is a rewrite that
//! leaves every database as it was (moving DDL into the base): the schema
//! then lists the old checksum in [`ServiceSchema::superseded`], and a
//! database that applied the old text is accepted and its record updated.

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
    /// `(version, SHA-256 hex)` of applied migration texts that a rewrite
    /// replaced without changing what they leave behind.
    pub superseded: &'static [(i64, &'static str)],
}

const FENCE_SQL: &str = include_str!("../sql/fence.sql");
const BASE_SQL: &str = include_str!("../sql/base.sql");

/// One migration to apply: the base or a file.
struct Step {
    version: i64,
    name: String,
    sql: String,
}

impl ServiceSchema {
    /// The base, then the schema's own migrations, in order.
    fn steps(&self) -> Vec<Step> {
        let base = Step {
            version: 0,
            name: "mosaic base".to_owned(),
            sql: BASE_SQL.replace("{runtime_role}", self.role),
        };
        std::iter::once(base)
            .chain(self.migrations.iter().map(|m| Step {
                version: m.version,
                name: m.description.to_string(),
                sql: m.sql.to_string(),
            }))
            .collect()
    }

    /// Whether `recorded` is an accepted earlier checksum of `version`.
    fn supersedes(&self, version: i64, recorded: &[u8]) -> bool {
        let hex: String = recorded.iter().map(|b| format!("{b:02x}")).collect();
        self.superseded
            .iter()
            .any(|(v, checksum)| *v == version && *checksum == hex)
    }
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
    sqlx::raw_sql(FENCE_SQL).execute(&mut *conn).await?;

    let mut applied = Vec::new();
    for schema in schemas {
        for step in schema.steps() {
            let checksum = Sha256::digest(step.sql.as_bytes()).to_vec();
            let recorded: Option<Vec<u8>> = sqlx::query_scalar(
                "SELECT checksum FROM mosaic_meta.schema_migrations WHERE schema_name = $1 AND version = $2",
            )
            .bind(schema.name)
            .bind(step.version)
            .fetch_optional(&mut *conn)
            .await?;
            match recorded {
                Some(c) if c == checksum => continue,
                Some(c) if schema.supersedes(step.version, &c) => {
                    sqlx::query(
                        "UPDATE mosaic_meta.schema_migrations SET checksum = $3, name = $4 \
                         WHERE schema_name = $1 AND version = $2",
                    )
                    .bind(schema.name)
                    .bind(step.version)
                    .bind(&checksum)
                    .bind(&step.name)
                    .execute(&mut *conn)
                    .await?;
                    tracing::info!(
                        schema = schema.name,
                        version = step.version,
                        "rewritten migration accepted"
                    );
                    continue;
                }
                Some(_) => {
                    return Err(MigrateError::Changed {
                        schema: schema.name.to_owned(),
                        version: step.version,
                    });
                }
                None => {}
            }
            let failed = |source| MigrateError::Failed {
                schema: schema.name.to_owned(),
                version: step.version,
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
            sqlx::raw_sql(&step.sql)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            sqlx::query(
                "INSERT INTO mosaic_meta.schema_migrations (schema_name, version, name, checksum) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(schema.name)
            .bind(step.version)
            .bind(&step.name)
            .bind(&checksum)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(schema = schema.name, version = step.version, name = %step.name, "migration applied");
            applied.push((schema.name.to_owned(), step.version));
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    static NONE: Migrations = Migrations::DEFAULT;

    #[test]
    fn the_base_comes_first_and_only_listed_checksums_are_superseded() {
        let schema = ServiceSchema {
            name: "x",
            role: "mosaic_x",
            extra_roles: &[],
            migrations: &NONE,
            superseded: &[(1, "00ff")],
        };
        assert!(schema.supersedes(1, &[0x00, 0xff]));
        assert!(!schema.supersedes(2, &[0x00, 0xff]));
        assert!(!schema.supersedes(1, &[0x01, 0xff]));
        let steps = schema.steps();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].version, 0);
        assert!(steps[0].sql.contains("FROM mosaic_x;"));
        assert!(!steps[0].sql.contains("{runtime_role}"));
    }
}

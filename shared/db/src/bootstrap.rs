//! Roles, database, schemas and grants, made idempotently by an admin login
//! (`mosaic migrate`, the local setup, the Kubernetes migration Job).
//!
//! - `mosaic_owner` (NOLOGIN) owns every schema and table; migrations run as it.
//! - One runtime role per service (LOGIN, NOSUPERUSER, NOBYPASSRLS, NOINHERIT,
//!   owns nothing): DML on its own schema only, `search_path` set to it, and
//!   short statement and idle-in-transaction timeouts.
//! - Extra NOLOGIN roles a runtime role may `SET ROLE` to (identity's platform
//!   role); NOINHERIT means their rights apply only after that explicit switch.
//! - [`ACCESS_ROLE`], the login every process reads tenant states and
//!   revocations with (see [`crate::access`]); identity's migration grants it
//!   exactly what it may read.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::migrate::ServiceSchema;

pub const OWNER_ROLE: &str = "mosaic_owner";
/// The access reader's login role.
pub const ACCESS_ROLE: &str = "mosaic_access";
const LOCK_KEY: i64 = 0x6d6f_7361_6963_0001;

/// A runtime role's login, taken from the service's own database URL so the
/// role and the service agree by construction.
#[derive(Debug, Clone)]
pub struct RuntimeLogin {
    pub schema: ServiceSchema,
    pub password: Option<String>,
}

/// Makes roles, the database and schemas; returns a connection to the database.
/// `access_password` is the access reader's (from its URL), if it has one.
pub async fn bootstrap(
    admin_url: &str,
    database: &str,
    logins: &[RuntimeLogin],
    access_password: Option<&str>,
) -> Result<PgConnection, sqlx::Error> {
    let admin: PgConnectOptions = admin_url.parse()?;
    let mut conn = admin.connect().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut conn)
        .await?;
    let result = cluster_objects(&mut conn, database, logins, access_password).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut conn)
        .await?;
    result?;
    conn.close().await?;

    let mut db = admin.database(database).connect().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut db)
        .await?;
    let result = database_objects(&mut db, database, logins).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut db)
        .await?;
    result?;
    Ok(db)
}

/// Runs DDL built server-side by `format()` (`%I` identifiers, `%L` literals),
/// so names and passwords are always quoted correctly.
async fn ddl(conn: &mut PgConnection, template: &str, args: &[&str]) -> Result<(), sqlx::Error> {
    let mut q = sqlx::query_scalar::<_, String>(template);
    for a in args {
        q = q.bind(*a);
    }
    let sql = q.fetch_one(&mut *conn).await?;
    sqlx::raw_sql(&sql).execute(&mut *conn).await?;
    Ok(())
}

async fn role_exists(conn: &mut PgConnection, role: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
        .bind(role)
        .fetch_one(&mut *conn)
        .await
}

async fn cluster_objects(
    conn: &mut PgConnection,
    database: &str,
    logins: &[RuntimeLogin],
    access_password: Option<&str>,
) -> Result<(), sqlx::Error> {
    access_role(conn, access_password).await?;
    if !role_exists(conn, OWNER_ROLE).await? {
        ddl(
            conn,
            "SELECT format('CREATE ROLE %I NOLOGIN', $1::text)",
            &[OWNER_ROLE],
        )
        .await?;
    }
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut *conn)
            .await?;
    if !superuser {
        ddl(
            conn,
            "SELECT format('GRANT %I TO %I', $1::text, current_user)",
            &[OWNER_ROLE],
        )
        .await?;
    }
    for login in logins {
        let role = login.schema.role;
        if !role_exists(conn, role).await? {
            ddl(
                conn,
                "SELECT format('CREATE ROLE %I LOGIN', $1::text)",
                &[role],
            )
            .await?;
        }
        // Re-assert the attributes every time: a hand-edited role is put right.
        ddl(
            conn,
            "SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION NOINHERIT', $1::text)",
            &[role],
        )
        .await?;
        if let Some(password) = &login.password {
            ddl(
                conn,
                "SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)",
                &[role, password],
            )
            .await?;
        }
        for extra in login.schema.extra_roles {
            if !role_exists(conn, extra).await? {
                ddl(
                    conn,
                    "SELECT format('CREATE ROLE %I NOLOGIN NOBYPASSRLS', $1::text)",
                    &[extra],
                )
                .await?;
            }
            ddl(
                conn,
                "SELECT format('GRANT %I TO %I', $1::text, $2::text)",
                &[extra, role],
            )
            .await?;
        }
        ddl(
            conn,
            "SELECT format('ALTER ROLE %I SET statement_timeout = %L', $1::text, '10s')",
            &[role],
        )
        .await?;
        ddl(
            conn,
            "SELECT format('ALTER ROLE %I SET idle_in_transaction_session_timeout = %L', $1::text, '30s')",
            &[role],
        )
        .await?;
    }
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&mut *conn)
            .await?;
    if !exists {
        ddl(
            conn,
            "SELECT format('CREATE DATABASE %I OWNER %I', $1::text, $2::text)",
            &[database, OWNER_ROLE],
        )
        .await?;
    }
    Ok(())
}

/// The access reader: a login with no rights of its own beyond what the
/// migrations grant it (SELECT on identity's published access state).
async fn access_role(conn: &mut PgConnection, password: Option<&str>) -> Result<(), sqlx::Error> {
    if !role_exists(conn, ACCESS_ROLE).await? {
        ddl(
            conn,
            "SELECT format('CREATE ROLE %I LOGIN', $1::text)",
            &[ACCESS_ROLE],
        )
        .await?;
    }
    ddl(
        conn,
        "SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION NOINHERIT', $1::text)",
        &[ACCESS_ROLE],
    )
    .await?;
    if let Some(password) = password {
        ddl(
            conn,
            "SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)",
            &[ACCESS_ROLE, password],
        )
        .await?;
    }
    ddl(
        conn,
        "SELECT format('ALTER ROLE %I SET statement_timeout = %L', $1::text, '5s')",
        &[ACCESS_ROLE],
    )
    .await
}

async fn database_objects(
    conn: &mut PgConnection,
    database: &str,
    logins: &[RuntimeLogin],
) -> Result<(), sqlx::Error> {
    ddl(
        conn,
        "SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', $1::text)",
        &[database],
    )
    .await?;
    sqlx::raw_sql("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        .execute(&mut *conn)
        .await?;
    ddl(
        conn,
        "SELECT format('GRANT CONNECT ON DATABASE %I TO %I', $1::text, $2::text)",
        &[database, ACCESS_ROLE],
    )
    .await?;
    for login in logins {
        let (schema, role) = (login.schema.name, login.schema.role);
        ddl(
            conn,
            "SELECT format('GRANT CONNECT ON DATABASE %I TO %I', $1::text, $2::text)",
            &[database, role],
        )
        .await?;
        ddl(
            conn,
            "SELECT format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I', $1::text, $2::text)",
            &[schema, OWNER_ROLE],
        )
        .await?;
        ddl(
            conn,
            "SELECT format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', $1::text)",
            &[schema],
        )
        .await?;
        ddl(
            conn,
            "SELECT format('GRANT USAGE ON SCHEMA %I TO %I', $1::text, $2::text)",
            &[schema, role],
        )
        .await?;
        for extra in login.schema.extra_roles {
            ddl(
                conn,
                "SELECT format('GRANT USAGE ON SCHEMA %I TO %I', $1::text, $2::text)",
                &[schema, extra],
            )
            .await?;
        }
        ddl(
            conn,
            "SELECT format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I', $1::text, $2::text, $3::text)",
            &[OWNER_ROLE, schema, role],
        )
        .await?;
        ddl(
            conn,
            "SELECT format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT USAGE, SELECT ON SEQUENCES TO %I', $1::text, $2::text, $3::text)",
            &[OWNER_ROLE, schema, role],
        )
        .await?;
        ddl(
            conn,
            "SELECT format('ALTER ROLE %I IN DATABASE %I SET search_path = %I', $1::text, $2::text, $3::text)",
            &[role, database, schema],
        )
        .await?;
    }
    Ok(())
}

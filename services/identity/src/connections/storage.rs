//! SQL of connections. Every statement names `tenant_id = $1` (RLS is the
//! backstop). The select list [`SELECT`] never includes the ciphertext: only
//! [`sealed`] (RevealSecret, the rotations) reads it.

use mosaic_api::{ApiResult, convert};
use mosaic_db::{HasMeta, Order, RowMeta, Select, TenantTx, Time, db_error};
use mosaic_proto::StoredEnum;
use mosaic_proto::identity::{Connection, ConnectionStatus, Provider};

use super::ConnectionFields;
use crate::ids::ConnectionId;
use crate::vault::storage::WrappedRow;

/// Select list over the alias `t`: metadata only.
pub(crate) const SELECT: &str = "t.connection_id, t.provider, t.display_name, t.scopes, t.status, \
     t.metadata, t.secret_version, t.secret_updated_at, t.revision, t.created_at, t.updated_at, t.deleted_at";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ConnectionRow {
    pub(crate) connection_id: ConnectionId,
    pub(crate) provider: String,
    pub(crate) display_name: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) status: String,
    pub(crate) metadata: serde_json::Value,
    pub(crate) secret_version: i64,
    #[sqlx(try_from = "Time")]
    pub(crate) secret_updated_at: chrono::DateTime<chrono::Utc>,
    #[sqlx(flatten)]
    pub(crate) meta: RowMeta,
}

impl HasMeta for ConnectionRow {
    fn meta(&self) -> &RowMeta {
        &self.meta
    }
}

impl ConnectionRow {
    fn status(&self) -> ConnectionStatus {
        ConnectionStatus::from_stored(&self.status).unwrap_or_default()
    }

    pub(crate) fn fields(&self) -> ConnectionFields {
        ConnectionFields {
            display_name: self.display_name.clone(),
            scopes: self.scopes.clone(),
            status: self.status(),
            metadata: self.metadata.clone(),
        }
    }

    pub(crate) fn into_proto(self) -> Connection {
        let provider = Provider::from_stored(&self.provider).unwrap_or_default() as i32;
        let status = self.status() as i32;
        Connection {
            connection_id: self.connection_id.to_string(),
            provider,
            display_name: self.display_name,
            scopes: self.scopes,
            status,
            metadata: Some(convert::json_to_struct(self.metadata)),
            secret_version: self.secret_version,
            secret_update_time: Some(convert::timestamp(self.secret_updated_at)),
            create_time: self.meta.create_time(),
            update_time: self.meta.update_time(),
            delete_time: self.meta.delete_time(),
            expire_time: self.meta.expire_time(),
            etag: self.meta.etag(),
        }
    }
}

/// A new connection's first ciphertext, sealed by the handler.
#[derive(Debug)]
pub(crate) struct SealedSecret {
    pub(crate) ciphertext: Vec<u8>,
    pub(crate) key_version: i32,
}

#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn insert(
    tx: &mut TenantTx,
    id: ConnectionId,
    provider: Provider,
    fields: &ConnectionFields,
    secret: &SealedSecret,
) -> ApiResult<ConnectionRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "INSERT INTO connections AS t (tenant_id, connection_id, provider, display_name, scopes, \
         status, metadata, secret_ciphertext, secret_version, key_version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9) RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(provider.stored_name())
    .bind(&fields.display_name)
    .bind(&fields.scopes)
    .bind(fields.status.stored_name())
    .bind(&fields.metadata)
    .bind(&secret.ciphertext)
    .bind(secret.key_version)
    .fetch_one(tx.conn())
    .await
    .map_err(db_error)
}

/// Writes the metadata of a locked row.
#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn update(
    tx: &mut TenantTx,
    id: ConnectionId,
    fields: &ConnectionFields,
) -> ApiResult<ConnectionRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "UPDATE connections AS t SET display_name = $3, scopes = $4, status = $5, metadata = $6, \
         revision = t.revision + 1, updated_at = now() \
         WHERE t.tenant_id = $1 AND t.connection_id = $2 RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(&fields.display_name)
    .bind(&fields.scopes)
    .bind(fields.status.stored_name())
    .bind(&fields.metadata)
    .fetch_one(tx.conn())
    .await
    .map_err(db_error)
}

/// Writes a new secret (version `version`) of a locked row.
#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn replace_secret(
    tx: &mut TenantTx,
    id: ConnectionId,
    version: i64,
    secret: &SealedSecret,
) -> ApiResult<ConnectionRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "UPDATE connections AS t SET secret_ciphertext = $3, secret_version = $4, key_version = $5, \
         secret_updated_at = now(), revision = t.revision + 1, updated_at = now() \
         WHERE t.tenant_id = $1 AND t.connection_id = $2 RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(&secret.ciphertext)
    .bind(version)
    .bind(secret.key_version)
    .fetch_one(tx.conn())
    .await
    .map_err(db_error)
}

/// A connection with its ciphertext and the wrapped data key it is
/// encrypted under.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SealedRow {
    #[sqlx(flatten)]
    pub(crate) connection: ConnectionRow,
    pub(crate) secret_ciphertext: Vec<u8>,
    #[sqlx(flatten)]
    pub(crate) key: WrappedRow,
}

/// RevealSecret's statement: the connection, its ciphertext and its data
/// key, in one round trip (`$1` tenant, `$2` connection).
pub(crate) const REVEAL_SQL: &str = concat!(
    "SELECT t.connection_id, t.provider, t.display_name, t.scopes, t.status, ",
    "t.metadata, t.secret_version, t.secret_updated_at, t.revision, t.created_at, t.updated_at, ",
    "t.deleted_at, t.secret_ciphertext, k.key_version, k.wrapped_key, k.master_key_id ",
    "FROM connections t JOIN tenant_keys k ",
    "ON k.tenant_id = t.tenant_id AND k.key_version = t.key_version ",
    "WHERE t.tenant_id = $1 AND t.connection_id = $2"
);

/// The row of [`REVEAL_SQL`]; `FOR UPDATE` when `lock` (a re-encryption).
#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn sealed(
    tx: &mut TenantTx,
    id: ConnectionId,
    lock: bool,
) -> ApiResult<Option<SealedRow>> {
    let tenant = tx.tenant_id();
    let sql = if lock {
        format!("{REVEAL_SQL} FOR UPDATE OF t")
    } else {
        REVEAL_SQL.to_owned()
    };
    sqlx::query_as(&sql)
        .bind(tenant)
        .bind(id)
        .fetch_optional(tx.conn())
        .await
        .map_err(db_error)
}

/// Up to `limit` ids of the tenant's connections still encrypted under a
/// data key older than `version` (a data-key rotation's next batch), locked.
pub(crate) async fn under_older_key(
    tx: &mut TenantTx,
    version: i32,
    limit: i64,
) -> ApiResult<Vec<ConnectionId>> {
    let tenant = tx.tenant_id();
    sqlx::query_scalar(
        "SELECT connection_id FROM connections WHERE tenant_id = $1 AND key_version < $2 \
         ORDER BY connection_id LIMIT $3 FOR UPDATE",
    )
    .bind(tenant)
    .bind(version)
    .bind(limit)
    .fetch_all(tx.conn())
    .await
    .map_err(db_error)
}

/// Stores a re-encrypted secret: the same secret and version under the
/// data key `key_version`. The etag does not change (the secret did not).
pub(crate) async fn reencrypt(
    tx: &mut TenantTx,
    id: ConnectionId,
    ciphertext: &[u8],
    key_version: i32,
) -> ApiResult<()> {
    let tenant = tx.tenant_id();
    sqlx::query(
        "UPDATE connections SET secret_ciphertext = $3, key_version = $4 \
         WHERE tenant_id = $1 AND connection_id = $2",
    )
    .bind(tenant)
    .bind(id)
    .bind(ciphertext)
    .bind(key_version)
    .execute(tx.conn())
    .await
    .map_err(db_error)?;
    Ok(())
}

/// The filters of ListConnections.
#[derive(Debug)]
pub(crate) struct ConnectionFilter {
    pub(crate) show_deleted: bool,
    pub(crate) provider: Option<Provider>,
    pub(crate) status: Option<ConnectionStatus>,
}

/// One page in id (= creation) order, `limit + 1` rows.
pub(crate) fn list_page(
    filter: &ConnectionFilter,
    after: Option<ConnectionId>,
    limit: u32,
) -> Select {
    let mut sql = Select::new(format!(
        "SELECT {SELECT} FROM connections t WHERE t.tenant_id = $tenant"
    ));
    if !filter.show_deleted {
        sql.push(" AND t.deleted_at IS NULL");
    }
    if let Some(provider) = filter.provider {
        sql.push(" AND t.provider = ")
            .push_bind(provider.stored_name());
    }
    if let Some(status) = filter.status {
        sql.push(" AND t.status = ").push_bind(status.stored_name());
    }
    sql.keyset(
        "t.connection_id",
        Order::Asc,
        after.map(ConnectionId::uuid),
        limit,
    );
    sql
}

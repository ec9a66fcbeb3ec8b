//! SQL of agent configs. Every statement names `tenant_id = $1` (RLS is the
//! backstop), but the public-key lookup, which has no tenant: it calls the
//! SECURITY DEFINER function `lookup_public_key`.

use mosaic_api::{ApiResult, convert};
use mosaic_core::TenantId;
use mosaic_db::{Database, HasMeta, OptTime, Order, Param, RowMeta, Select, TenantTx, db_error};
use mosaic_proto::agents::Agent;

use super::{AgentFields, format_temperature};
use crate::ids::AgentId;

/// Select list over the alias `t`.
pub(crate) const SELECT: &str = "t.agent_id, t.display_name, t.system_prompt, t.model, \
     t.temperature_centi, t.voice_settings, t.enabled, t.metadata, t.public_key_hash, \
     t.public_key_prefix, t.public_key_created_at, t.revision, t.created_at, t.updated_at, t.deleted_at";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AgentRow {
    pub(crate) agent_id: AgentId,
    pub(crate) display_name: String,
    pub(crate) system_prompt: String,
    pub(crate) model: String,
    pub(crate) temperature_centi: i16,
    pub(crate) voice_settings: serde_json::Value,
    pub(crate) enabled: bool,
    pub(crate) metadata: serde_json::Value,
    /// The SHA-256 of the public key (never returned: it names the lookup's
    /// cache entry to invalidate).
    pub(crate) public_key_hash: Option<Vec<u8>>,
    pub(crate) public_key_prefix: Option<String>,
    #[sqlx(try_from = "OptTime")]
    pub(crate) public_key_created_at: Option<chrono::DateTime<chrono::Utc>>,
    #[sqlx(flatten)]
    pub(crate) meta: RowMeta,
}

impl HasMeta for AgentRow {
    fn meta(&self) -> &RowMeta {
        &self.meta
    }
}

impl AgentRow {
    pub(crate) fn fields(&self) -> AgentFields {
        AgentFields {
            display_name: self.display_name.clone(),
            system_prompt: self.system_prompt.clone(),
            model: self.model.clone(),
            temperature: self.temperature_centi,
            voice_settings: self.voice_settings.clone(),
            enabled: self.enabled,
            metadata: self.metadata.clone(),
        }
    }

    pub(crate) fn into_proto(self) -> Agent {
        Agent {
            agent_id: self.agent_id.to_string(),
            display_name: self.display_name,
            system_prompt: self.system_prompt,
            model: self.model,
            temperature: format_temperature(self.temperature_centi),
            voice_settings: Some(convert::json_to_struct(self.voice_settings)),
            enabled: self.enabled,
            metadata: Some(convert::json_to_struct(self.metadata)),
            public_key_prefix: self.public_key_prefix.unwrap_or_default(),
            public_key_create_time: convert::opt_timestamp(self.public_key_created_at),
            create_time: self.meta.create_time(),
            update_time: self.meta.update_time(),
            delete_time: self.meta.delete_time(),
            expire_time: self.meta.expire_time(),
            etag: self.meta.etag(),
        }
    }
}

#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn insert(
    tx: &mut TenantTx,
    id: AgentId,
    fields: &AgentFields,
) -> ApiResult<AgentRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "INSERT INTO agents AS t (tenant_id, agent_id, display_name, system_prompt, model, \
         temperature_centi, voice_settings, enabled, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(&fields.display_name)
    .bind(&fields.system_prompt)
    .bind(&fields.model)
    .bind(fields.temperature)
    .bind(&fields.voice_settings)
    .bind(fields.enabled)
    .bind(&fields.metadata)
    .fetch_one(tx.conn())
    .await
    .map_err(db_error)
}

/// Writes every field of a row the caller locked; NOT_FOUND if it vanished.
#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn update(
    tx: &mut TenantTx,
    id: AgentId,
    fields: &AgentFields,
) -> ApiResult<AgentRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "UPDATE agents AS t SET display_name = $3, system_prompt = $4, model = $5, \
         temperature_centi = $6, voice_settings = $7, enabled = $8, metadata = $9, \
         revision = t.revision + 1, updated_at = now() \
         WHERE t.tenant_id = $1 AND t.agent_id = $2 RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(&fields.display_name)
    .bind(&fields.system_prompt)
    .bind(&fields.model)
    .bind(fields.temperature)
    .bind(&fields.voice_settings)
    .bind(fields.enabled)
    .bind(&fields.metadata)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)?
    .ok_or_else(|| super::RESOURCE.not_found())
}

/// Sets `(hash, prefix)` as the agent's public key, or clears it (`None`).
pub(crate) async fn set_public_key(
    tx: &mut TenantTx,
    id: AgentId,
    key: Option<(&[u8], &str)>,
) -> ApiResult<AgentRow> {
    let tenant = tx.tenant_id();
    let (hash, prefix) = key.unzip();
    sqlx::query_as(&format!(
        "UPDATE agents AS t SET public_key_hash = $3, public_key_prefix = $4, \
         public_key_created_at = CASE WHEN $3 IS NULL THEN NULL ELSE now() END, \
         revision = t.revision + 1, updated_at = now() \
         WHERE t.tenant_id = $1 AND t.agent_id = $2 RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(hash)
    .bind(prefix)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)?
    .ok_or_else(|| super::RESOURCE.not_found())
}

/// The filters of ListAgents.
#[derive(Debug)]
pub(crate) struct AgentFilter {
    pub(crate) show_deleted: bool,
    pub(crate) enabled: Option<bool>,
    pub(crate) model: Option<String>,
}

/// One page in id (= creation) order, `limit + 1` rows; only the filters in
/// use become SQL.
pub(crate) fn list_page(filter: &AgentFilter, after: Option<AgentId>, limit: u32) -> Select {
    let mut sql = Select::new(format!(
        "SELECT {SELECT} FROM agents t WHERE t.tenant_id = $tenant"
    ));
    if !filter.show_deleted {
        sql.push(" AND t.deleted_at IS NULL");
    }
    if let Some(enabled) = filter.enabled {
        sql.push(" AND t.enabled = ").push_bind(enabled);
    }
    if let Some(model) = &filter.model {
        sql.push(" AND t.model = ")
            .push_bind(Param::from(model.as_str()));
    }
    sql.keyset("t.agent_id", Order::Asc, after.map(AgentId::uuid), limit);
    sql
}

/// What the public-key lookup may reveal.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PublicAgent {
    pub(crate) tenant_id: TenantId,
    pub(crate) agent_id: AgentId,
    pub(crate) display_name: String,
    pub(crate) voice_settings: serde_json::Value,
}

/// The live, enabled agent holding the key with this SHA-256, of any tenant.
#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn lookup(db: &Database, hash: &[u8]) -> ApiResult<Option<PublicAgent>> {
    let found: Vec<PublicAgent> = db
        .call_without_tenant(
            "SELECT tenant_id, agent_id, display_name, voice_settings FROM lookup_public_key($1)",
            hash,
        )
        .await?;
    Ok(found.into_iter().next())
}

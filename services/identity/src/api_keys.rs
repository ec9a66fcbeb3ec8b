//! `ApiKeyService`: long-lived secrets for backends. The secret is returned
//! once, by CreateApiKey; only its SHA-256 is stored (it is 256 random bits,
//! so a slow password hash would add nothing). The secret names its tenant and
//! key id, so the token exchange can find it inside that tenant's RLS scope.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mosaic_api::page::{self, PageBinding};
use mosaic_api::{AllOk, ApiError, convert, validate};
use mosaic_db::idempotency::{Claim, fingerprint};
use mosaic_db::{Database, TenantContext};
use mosaic_proto::identity::{
    ApiKey, CreateApiKeyRequest, CreateApiKeyResponse, ListApiKeysRequest, ListApiKeysResponse,
    RevokeApiKeyRequest, Role as PbRole, api_key_service_server::ApiKeyService,
};
use mosaic_tenant::Role;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::names;

const MAX_NAME: usize = 200;
const SECRET_PREFIX: &str = "mosaic";

fn not_found() -> ApiError {
    ApiError::not_found("API_KEY_NOT_FOUND", "API key not found")
}

/// A freshly made secret: `mosaic_<tenant hex>_<key hex>_<43 chars of base64url>`.
pub(crate) struct Secret {
    pub text: String,
    pub hash: Vec<u8>,
    pub prefix: String,
}

impl Secret {
    fn generate(tenant: Uuid, key: Uuid) -> Self {
        let random: [u8; 32] = rand::random();
        let random = URL_SAFE_NO_PAD.encode(random);
        let text = format!(
            "{SECRET_PREFIX}_{}_{}_{random}",
            tenant.simple(),
            key.simple()
        );
        Self {
            hash: hash(&text),
            prefix: format!("{}…", &random[..8]),
            text,
        }
    }
}

pub(crate) fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// The tenant and key id a secret names, if it has the shape of one.
pub(crate) fn parse_secret(secret: &str) -> Option<(Uuid, Uuid)> {
    let mut parts = secret.splitn(4, '_');
    let (prefix, tenant, key, random) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if prefix != SECRET_PREFIX || tenant.len() != 32 || key.len() != 32 || random.len() != 43 {
        return None;
    }
    Some((Uuid::try_parse(tenant).ok()?, Uuid::try_parse(key).ok()?))
}

#[derive(Debug)]
pub struct ApiKeys {
    db: Database,
}

impl ApiKeys {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[tonic::async_trait]
impl ApiKeyService for ApiKeys {
    async fn create_api_key(
        &self,
        req: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let r = req.into_inner();
        let (display_name, role, expires_at, request_id) = (
            validate::name("display_name", &r.display_name, MAX_NAME),
            validate::enum_or::<PbRole>("role", r.role, PbRole::Member).and_then(|pb| {
                match names::role(pb) {
                    Some(Role::Owner) | None => Err(ApiError::invalid_argument(
                        "role",
                        "an API key cannot be an owner",
                    )),
                    Some(role) => Ok(role),
                }
            }),
            r.expire_time
                .as_ref()
                .map(|t| convert::datetime("expire_time", t))
                .transpose()
                .and_then(|t| match t {
                    Some(t) if t <= chrono::Utc::now() => Err(ApiError::invalid_argument(
                        "expire_time",
                        "must be in the future",
                    )),
                    t => Ok(t),
                }),
            validate::request_id("request_id", &r.request_id),
        )
            .all_ok()?;
        // A key never carries more than its creator holds.
        ctx.require(role)?;

        let mut tx = self.db.begin(&ctx).await?;
        // A retry gets the key without its secret: secrets are never stored.
        if let Some(rid) = request_id
            && let Claim::Replay(resp) = tx
                .claim_request("CreateApiKey", rid, &fingerprint(&r))
                .await?
        {
            return Ok(Response::new(resp));
        }
        let key_id = Uuid::now_v7();
        let secret = Secret::generate(tx.tenant_id(), key_id);
        let creator = ctx.principal().to_owned();
        let row = store::insert(
            &mut tx,
            key_id,
            &display_name,
            role,
            &secret,
            &creator,
            expires_at,
        )
        .await?;
        tx.audit(
            "api_key.create",
            "api_key",
            key_id,
            serde_json::json!({ "role": role.as_str() }),
        )
        .await?;
        let mut resp = CreateApiKeyResponse {
            api_key: Some(row.into_proto()),
            secret: String::new(),
        };
        if let Some(rid) = request_id {
            tx.complete_request("CreateApiKey", rid, &resp).await?;
        }
        tx.commit().await?;
        resp.secret = secret.text;
        Ok(Response::new(resp))
    }

    async fn list_api_keys(
        &self,
        req: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let r = req.get_ref();
        let binding = PageBinding::new("ListApiKeys")
            .with(ctx.tenant_id()?)
            .with(r.show_revoked);
        let (size, after) = (
            validate::page_size("page_size", r.page_size),
            page::decode::<Uuid>(&binding, &r.page_token),
        )
            .all_ok()?;
        let mut tx = self.db.begin(&ctx).await?;
        let rows = store::list(&mut tx, after, r.show_revoked, size).await?;
        tx.finish_read();
        let (rows, next_page_token) = page::split_page(rows, size, &binding, |k| k.api_key_id);
        Ok(Response::new(ListApiKeysResponse {
            api_keys: rows.into_iter().map(store::ApiKeyRow::into_proto).collect(),
            next_page_token,
        }))
    }

    async fn revoke_api_key(
        &self,
        req: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<ApiKey>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let key_id = validate::id("api_key_id", &req.get_ref().api_key_id)?;
        let mut tx = self.db.begin(&ctx).await?;
        let row = match store::revoke(&mut tx, key_id).await? {
            Some(row) => {
                tx.audit("api_key.revoke", "api_key", key_id, serde_json::json!({}))
                    .await?;
                row
            }
            // Already revoked: revoking again is a no-op that returns the key.
            None => store::get(&mut tx, key_id).await?.ok_or_else(not_found)?,
        };
        tx.commit().await?;
        Ok(Response::new(row.into_proto()))
    }
}

pub(crate) mod store {
    use chrono::{DateTime, Utc};
    use mosaic_api::{ApiResult, convert};
    use mosaic_db::{TenantTx, db_error};
    use mosaic_proto::identity::ApiKey;
    use mosaic_tenant::Role;
    use uuid::Uuid;

    use super::Secret;
    use crate::names;

    #[derive(Debug, sqlx::FromRow)]
    pub struct ApiKeyRow {
        pub tenant_id: Uuid,
        pub api_key_id: Uuid,
        pub display_name: String,
        pub role: String,
        pub secret_prefix: String,
        pub creator: String,
        pub created_at: DateTime<Utc>,
        pub expires_at: Option<DateTime<Utc>>,
        pub revoked_at: Option<DateTime<Utc>>,
    }

    impl ApiKeyRow {
        pub fn into_proto(self) -> ApiKey {
            ApiKey {
                api_key_id: self.api_key_id.to_string(),
                tenant_id: self.tenant_id.to_string(),
                display_name: self.display_name,
                role: names::role_to_pb(&self.role) as i32,
                secret_prefix: self.secret_prefix,
                create_time: Some(convert::timestamp(self.created_at)),
                expire_time: convert::opt_timestamp(self.expires_at),
                revoke_time: convert::opt_timestamp(self.revoked_at),
                creator: self.creator,
            }
        }
    }

    const COLUMNS: &str = "tenant_id, api_key_id, display_name, role, secret_prefix, creator, created_at, expires_at, revoked_at";

    pub async fn insert(
        tx: &mut TenantTx,
        key_id: Uuid,
        display_name: &str,
        role: Role,
        secret: &Secret,
        creator: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> ApiResult<ApiKeyRow> {
        let tenant = tx.tenant_id();
        sqlx::query_as(&format!(
            "INSERT INTO api_keys (tenant_id, api_key_id, display_name, role, secret_hash, secret_prefix, creator, \
             expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}"
        ))
        .bind(tenant)
        .bind(key_id)
        .bind(display_name)
        .bind(role.as_str())
        .bind(&secret.hash)
        .bind(&secret.prefix)
        .bind(creator)
        .bind(expires_at)
        .fetch_one(tx.conn())
        .await
        .map_err(db_error)
    }

    pub async fn get(tx: &mut TenantTx, key_id: Uuid) -> ApiResult<Option<ApiKeyRow>> {
        let tenant = tx.tenant_id();
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE tenant_id = $1 AND api_key_id = $2"
        ))
        .bind(tenant)
        .bind(key_id)
        .fetch_optional(tx.conn())
        .await
        .map_err(db_error)
    }

    pub async fn list(
        tx: &mut TenantTx,
        after: Option<Uuid>,
        show_revoked: bool,
        size: u32,
    ) -> ApiResult<Vec<ApiKeyRow>> {
        let tenant = tx.tenant_id();
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE tenant_id = $1 AND ($2::uuid IS NULL OR api_key_id > $2) \
             AND ($3 OR revoked_at IS NULL) ORDER BY api_key_id LIMIT $4"
        ))
        .bind(tenant)
        .bind(after)
        .bind(show_revoked)
        .bind(i64::from(size) + 1)
        .fetch_all(tx.conn())
        .await
        .map_err(db_error)
    }

    /// The key, newly revoked; `None` when it does not exist or was already revoked.
    pub async fn revoke(tx: &mut TenantTx, key_id: Uuid) -> ApiResult<Option<ApiKeyRow>> {
        let tenant = tx.tenant_id();
        sqlx::query_as(&format!(
            "UPDATE api_keys SET revoked_at = now() WHERE tenant_id = $1 AND api_key_id = $2 \
             AND revoked_at IS NULL RETURNING {COLUMNS}"
        ))
        .bind(tenant)
        .bind(key_id)
        .fetch_optional(tx.conn())
        .await
        .map_err(db_error)
    }

    /// What the token exchange needs: hash, role, validity, and whether the tenant is live.
    #[derive(Debug, sqlx::FromRow)]
    pub struct ExchangeRow {
        pub secret_hash: Vec<u8>,
        pub role: String,
        pub expires_at: Option<DateTime<Utc>>,
        pub revoked_at: Option<DateTime<Utc>>,
        pub tenant_deleted: bool,
    }

    pub async fn for_exchange(tx: &mut TenantTx, key_id: Uuid) -> ApiResult<Option<ExchangeRow>> {
        let tenant = tx.tenant_id();
        sqlx::query_as(
            "SELECT k.secret_hash, k.role, k.expires_at, k.revoked_at, t.deleted_at IS NOT NULL AS tenant_deleted \
             FROM api_keys k JOIN tenants t ON t.tenant_id = k.tenant_id \
             WHERE k.tenant_id = $1 AND k.api_key_id = $2",
        )
        .bind(tenant)
        .bind(key_id)
        .fetch_optional(tx.conn())
        .await
        .map_err(db_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_name_their_tenant_and_key() {
        let (t, k) = (Uuid::now_v7(), Uuid::now_v7());
        let s = Secret::generate(t, k);
        assert_eq!(parse_secret(&s.text), Some((t, k)));
        assert_eq!(s.hash, hash(&s.text));
        assert!(!s.prefix.is_empty() && !s.text.contains(&format!("{}_", s.prefix)));
        assert_eq!(parse_secret("mosaic_x_y_z"), None);
        assert_eq!(parse_secret(""), None);
    }
}

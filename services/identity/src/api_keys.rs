//! `ApiKeyService`: long-lived secrets for backends. The secret is returned
//! once, by CreateApiKey; only its SHA-256 is stored (it is 256 random bits,
//! so a slow password hash would add nothing). The secret names its tenant and
//! key id, so the token exchange can find it inside that tenant's RLS scope.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mosaic_api::page::{self, PageBinding};
use mosaic_api::{AllOk, ApiError, parse};
use mosaic_core::TenantId;
use mosaic_db::{Database, TenantContext, create_once};
use mosaic_proto::identity::{
    ApiKey, CreateApiKeyRequest, CreateApiKeyResponse, ListApiKeysRequest, ListApiKeysResponse,
    RevokeApiKeyRequest, Role as PbRole, api_key_service_server::ApiKeyService,
};
use mosaic_tenant::Role;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::access_log::{self, Change};
use crate::ids::ApiKeyId;
use crate::members::role_of;

pub(crate) mod storage;

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
    fn generate(tenant: TenantId, key: ApiKeyId) -> Self {
        let random: [u8; 32] = rand::random();
        let random = URL_SAFE_NO_PAD.encode(random);
        let text = format!(
            "{SECRET_PREFIX}_{}_{}_{random}",
            tenant.uuid().simple(),
            key.uuid().simple()
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
pub(crate) fn parse_secret(secret: &str) -> Option<(TenantId, ApiKeyId)> {
    let mut parts = secret.splitn(4, '_');
    let (prefix, tenant, key, random) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if prefix != SECRET_PREFIX || tenant.len() != 32 || key.len() != 32 || random.len() != 43 {
        return None;
    }
    Some((
        Uuid::try_parse(tenant).ok()?.into(),
        Uuid::try_parse(key).ok()?.into(),
    ))
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
        let request = req.into_inner();
        let (display_name, role, expires_at, request_id) = (
            parse::name("display_name", &request.display_name, MAX_NAME),
            parse::enum_or::<PbRole>("role", request.role, PbRole::Member).and_then(|pb| {
                match role_of(pb) {
                    Some(Role::Owner) | None => Err(ApiError::invalid_argument(
                        "role",
                        "an API key cannot be an owner",
                    )),
                    Some(role) => Ok(role),
                }
            }),
            parse::optional_time("expire_time", request.expire_time.as_ref()).and_then(
                |at| match at {
                    Some(at) if at <= chrono::Utc::now() => Err(ApiError::invalid_argument(
                        "expire_time",
                        "must be in the future",
                    )),
                    at => Ok(at),
                },
            ),
            parse::request_id("request_id", &request.request_id),
        )
            .all_ok()?;
        // A key never carries more than its creator holds.
        ctx.require(role)?;

        // What is stored for a retry is the response without the secret
        // (secrets are never stored), so a retry gets the key without it.
        let mut secret = None;
        let mut response = create_once(
            &self.db,
            &ctx,
            "CreateApiKey",
            request_id,
            &request,
            async |tx| {
                let key_id = ApiKeyId::new();
                let made = Secret::generate(tx.tenant_id(), key_id);
                let creator = ctx.principal().to_owned();
                let row =
                    storage::insert(tx, key_id, &display_name, role, &made, &creator, expires_at)
                        .await?;
                tx.audit(
                    "api_key.create",
                    "api_key",
                    key_id,
                    serde_json::json!({ "role": role.as_str() }),
                )
                .await?;
                secret = Some(made.text);
                Ok(CreateApiKeyResponse {
                    api_key: Some(row.into_proto()),
                    secret: String::new(),
                })
            },
        )
        .await?;
        response.secret = secret.unwrap_or_default();
        Ok(Response::new(response))
    }

    async fn list_api_keys(
        &self,
        req: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let request = req.get_ref();
        let binding = PageBinding::new("ListApiKeys")
            .with(ctx.tenant_id()?)
            .with(request.show_revoked);
        let (size, after) = (
            parse::page_size("page_size", request.page_size),
            page::decode::<ApiKeyId>(&binding, &request.page_token),
        )
            .all_ok()?;
        let rows = self
            .db
            .read(&ctx, storage::list(after, request.show_revoked, size))
            .await?;
        let (api_keys, next_page_token) = page::page(
            rows,
            size,
            &binding,
            |key| key.api_key_id,
            storage::ApiKeyRow::into_proto,
        );
        Ok(Response::new(ListApiKeysResponse {
            api_keys,
            next_page_token,
        }))
    }

    async fn revoke_api_key(
        &self,
        req: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<ApiKey>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let key_id = parse::id("api_key_id", &req.get_ref().api_key_id)?;
        let mut tx = self.db.begin(&ctx).await?;
        let row = match storage::revoke(&mut tx, key_id).await? {
            Some(row) => {
                tx.audit("api_key.revoke", "api_key", key_id, serde_json::json!({}))
                    .await?;
                // Tokens exchanged from the key end too.
                let principal = format!("key:{key_id}");
                access_log::publish(&mut tx, Change::PrincipalRevoked(&principal)).await?;
                row
            }
            // Already revoked: revoking again is a no-op that returns the key.
            None => storage::get(&mut tx, key_id).await?.ok_or_else(not_found)?,
        };
        tx.commit().await?;
        Ok(Response::new(row.into_proto()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_name_their_tenant_and_key() {
        let (tenant, key) = (TenantId::new(), ApiKeyId::new());
        let secret = Secret::generate(tenant, key);
        assert_eq!(parse_secret(&secret.text), Some((tenant, key)));
        assert_eq!(secret.hash, hash(&secret.text));
        assert!(!secret.prefix.is_empty() && !secret.text.contains(&format!("{}_", secret.prefix)));
        assert_eq!(parse_secret("mosaic_x_y_z"), None);
        assert_eq!(parse_secret(""), None);
    }
}

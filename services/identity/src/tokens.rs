//! `TokenService`: exchanges an API key for a short-lived signed token. Public
//! (the key is the credential). Every failure looks the same to the caller,
//! `UNAUTHENTICATED API_KEY_INVALID`, unless the caller proved it holds the
//! secret, in which case it learns whether the key was revoked or expired.

use std::time::Duration;

use mosaic_api::{ApiError, ApiResult, convert};
use mosaic_db::{Database, TenantContext};
use mosaic_proto::identity::{
    ExchangeApiKeyRequest, ExchangeApiKeyResponse, token_service_server::TokenService,
};
use mosaic_tenant::Claims;
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

use crate::TokenIssuer;
use crate::api_keys::{hash, parse_secret, storage};

const MIN_TTL: u64 = 60;
const MAX_TTL: u64 = 3600;

fn invalid() -> ApiError {
    ApiError::unauthenticated("API_KEY_INVALID", "the API key is not valid")
}

#[derive(Debug)]
pub struct Tokens {
    db: Database,
    issuer: TokenIssuer,
}

impl Tokens {
    pub fn new(db: Database, issuer: TokenIssuer) -> Self {
        Self { db, issuer }
    }

    async fn exchange(&self, request: &ExchangeApiKeyRequest) -> ApiResult<ExchangeApiKeyResponse> {
        let ttl = match request.ttl_seconds {
            0 => self.issuer.default_ttl,
            n if (MIN_TTL..=MAX_TTL).contains(&(n as u64)) && n > 0 => {
                Duration::from_secs(n as u64)
            }
            _ => {
                return Err(ApiError::invalid_argument(
                    "ttl_seconds",
                    format!("between {MIN_TTL} and {MAX_TTL}, or 0 for the default"),
                ));
            }
        };
        let (tenant, key_id) = parse_secret(&request.api_key).ok_or_else(invalid)?;
        // Nobody is authenticated yet: act as the exchange itself, inside the
        // tenant the key names (RLS still fences every read).
        let ctx = TenantContext::system(tenant, "token-exchange");
        let row: storage::ExchangeRow = self
            .db
            .read(&ctx, storage::for_exchange(key_id))
            .await?
            .into_iter()
            .next()
            .ok_or_else(invalid)?;
        if !bool::from(row.secret_hash.ct_eq(&hash(&request.api_key))) {
            return Err(invalid());
        }
        if row.revoked_at.is_some() {
            return Err(ApiError::unauthenticated(
                "API_KEY_REVOKED",
                "the API key was revoked",
            ));
        }
        if row.expires_at.is_some_and(|t| t <= chrono::Utc::now()) {
            return Err(ApiError::unauthenticated(
                "API_KEY_EXPIRED",
                "the API key has expired",
            ));
        }
        if row.tenant_deleted {
            return Err(ApiError::failed_precondition(
                "TENANT_DELETED",
                "the tenant is deleted",
            ));
        }
        let claims = Claims::new(
            &self.issuer.auth,
            format!("key:{key_id}"),
            Some(tenant),
            vec![row.role],
            ttl,
        );
        let access_token = self.issuer.signer.sign(&claims)?;
        let expire = chrono::DateTime::from_timestamp(claims.exp as i64, 0).unwrap_or_default();
        tracing::info!(tenant = %tenant, api_key = %key_id, "api key exchanged");
        Ok(ExchangeApiKeyResponse {
            access_token,
            token_type: "Bearer".to_owned(),
            expire_time: Some(convert::timestamp(expire)),
        })
    }
}

#[tonic::async_trait]
impl TokenService for Tokens {
    async fn exchange_api_key(
        &self,
        req: Request<ExchangeApiKeyRequest>,
    ) -> Result<Response<ExchangeApiKeyResponse>, Status> {
        Ok(Response::new(self.exchange(req.get_ref()).await?))
    }
}

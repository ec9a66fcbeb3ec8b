//! `request_id` idempotency (AIP-155). A create with a `request_id` first
//! claims `(tenant, method, request_id)` in `idempotency_keys`, in the same
//! transaction as its effect. A retry finds the claim and gets the first
//! response back; a concurrent retry waits on the claim's row lock until the
//! first commits (or rolls back, and then proceeds itself). The same id with a
//! different request is INVALID_ARGUMENT.
//!
//! A claim is kept at least [`REQUEST_RETENTION`]; the purge
//! ([`TenantTx::expire_requests`]) removes older ones, after which the same
//! `request_id` counts as new.

use chrono::{DateTime, Utc};
use mosaic_api::{ApiError, ApiResult};
use prost::Message;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::db_error;
use crate::pool::TenantTx;

/// How long a `request_id` is remembered: retries within it get the first response.
pub const REQUEST_RETENTION: chrono::Duration = chrono::Duration::days(7);

/// What the caller should do after [`TenantTx::claim_request`].
#[derive(Debug)]
pub enum Claim<T> {
    /// First time: do the work, then [`TenantTx::complete_request`].
    New,
    /// Seen before: return this.
    Replay(T),
}

/// The fingerprint of a request message (without any field's meaning: the whole encoding).
pub fn fingerprint<M: Message>(request: &M) -> Vec<u8> {
    Sha256::digest(request.encode_to_vec()).to_vec()
}

impl TenantTx {
    pub async fn claim_request<T: Message + Default>(
        &mut self,
        method: &str,
        request_id: Uuid,
        fingerprint: &[u8],
    ) -> ApiResult<Claim<T>> {
        let tenant = self.tenant_id();
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (tenant_id, method, request_id, request_hash) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(method)
        .bind(request_id)
        .bind(fingerprint)
        .execute(self.conn())
        .await
        .map_err(db_error)?
        .rows_affected();
        if inserted == 1 {
            return Ok(Claim::New);
        }
        let (hash, response): (Vec<u8>, Option<Vec<u8>>) = sqlx::query_as(
            "SELECT request_hash, response FROM idempotency_keys \
             WHERE tenant_id = $1 AND method = $2 AND request_id = $3",
        )
        .bind(tenant)
        .bind(method)
        .bind(request_id)
        .fetch_one(self.conn())
        .await
        .map_err(db_error)?;
        if hash != fingerprint {
            return Err(ApiError::invalid_argument(
                "request_id",
                "already used for a different request",
            ));
        }
        let bytes =
            response.ok_or_else(|| ApiError::internal("idempotency claim without response"))?;
        T::decode(bytes.as_slice())
            .map(Claim::Replay)
            .map_err(ApiError::internal)
    }

    /// Stores the response a retry of this request will get.
    pub async fn complete_request<T: Message>(
        &mut self,
        method: &str,
        request_id: Uuid,
        response: &T,
    ) -> ApiResult<()> {
        let tenant = self.tenant_id();
        let updated = sqlx::query(
            "UPDATE idempotency_keys SET response = $4 \
             WHERE tenant_id = $1 AND method = $2 AND request_id = $3",
        )
        .bind(tenant)
        .bind(method)
        .bind(request_id)
        .bind(response.encode_to_vec())
        .execute(self.conn())
        .await
        .map_err(db_error)?
        .rows_affected();
        if updated != 1 {
            return Err(ApiError::internal(
                "idempotency response stored without a claim",
            ));
        }
        Ok(())
    }

    /// Forgets this tenant's `request_id`s claimed before `before` (the purge).
    pub async fn expire_requests(&mut self, before: DateTime<Utc>) -> ApiResult<u64> {
        let tenant = self.tenant_id();
        sqlx::query("DELETE FROM idempotency_keys WHERE tenant_id = $1 AND created_at < $2")
            .bind(tenant)
            .bind(before)
            .execute(self.conn())
            .await
            .map(|done| done.rows_affected())
            .map_err(db_error)
    }
}

//! The vault's operator work: the startup check of the master key, and the
//! two rotations (`mosaic vault rotate-master-key`, `mosaic vault
//! rotate-data-key`). Both rotations run online, beside serving processes:
//!
//! - **Master key.** Re-wraps every data key not wrapped under the current
//!   master key, one key per transaction (its row locked), without touching
//!   a secret. Serving processes must hold the new key, as current or as
//!   previous, before the rotation starts, and the old one until it ends:
//!   reads unwrap with whichever key a row names, so they work throughout.
//! - **Data key.** Adds the tenant's next data key version (new secrets use
//!   it at once), then re-encrypts the tenant's secrets still under older
//!   versions in batches of a bounded size, each batch one short
//!   transaction that locks only its rows; a reveal reads a row under
//!   whichever version it names, so reads work throughout. Versions no
//!   secret uses any more are removed at the end.
//!
//! Both are audited in each tenant (`data_key.rewrap`, `data_key.rotate`,
//! `data_key.reencrypt` per batch, `data_key.retire`) as
//! `system:vault-rotation`.

use std::sync::Arc;

use mosaic_api::{ApiError, ApiResult};
use mosaic_core::{Probe, ProbeFuture, StartupError, TenantId};
use mosaic_db::{Database, TenantContext};

use super::{MasterKey, data_key_aad, secret_aad, storage};
use crate::connections::storage as connections;

/// The principal the rotations act as.
const ROTATION: &str = "vault-rotation";
/// Data keys re-wrapped per scan of a master-key rotation.
const REWRAP_PAGE: i64 = 500;
/// The default and largest batch of a data-key rotation.
pub const DEFAULT_BATCH: i64 = 100;
pub const MAX_BATCH: i64 = 10_000;

/// Which master keys wrap the stored data keys, against the keyring: an
/// error naming the unknown ones (the wrong master key, or a previous key
/// left out) for the startup check and the probe. `db` needs identity's
/// platform role.
pub async fn verify(db: &Database, keys: &dyn MasterKey) -> Result<(), VerifyError> {
    let ctx = TenantContext::system_platform("vault-check");
    let mut tx = db
        .begin_platform(&ctx)
        .await
        .map_err(VerifyError::Unreadable)?;
    let ids = storage::master_key_ids(&mut tx)
        .await
        .map_err(VerifyError::Unreadable)?;
    tx.commit().await.map_err(VerifyError::Unreadable)?;
    let unknown: Vec<String> = ids.into_iter().filter(|id| !keys.knows(id)).collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(VerifyError::UnknownKeys {
            unknown,
            current: keys.current_id().to_owned(),
        })
    }
}

/// Why [`verify`] failed.
#[derive(Debug)]
pub enum VerifyError {
    /// The database could not be read (not the key's fault).
    Unreadable(ApiError),
    /// Data keys are wrapped under master keys the keyring does not hold.
    UnknownKeys {
        unknown: Vec<String>,
        current: String,
    },
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreadable(e) => write!(f, "the tenant keys are unreadable: {}", e.message()),
            Self::UnknownKeys { unknown, current } => write!(
                f,
                "the vault's data keys are wrapped by master key {} but {} holds {current} \
                 (and {} no such key): the wrong master key? A rotated-away key belongs in \
                 {} until `mosaic vault rotate-master-key` has re-wrapped every data key",
                unknown.join(", "),
                super::MASTER_KEY,
                super::PREVIOUS_MASTER_KEYS,
                super::PREVIOUS_MASTER_KEYS,
            ),
        }
    }
}

/// identity's startup check: a master key that cannot unwrap the stored
/// data keys stops the process with [`VerifyError`]'s message. When the
/// database cannot be read yet, the process starts and the probe
/// ([`KeyProbe`]) keeps checking.
pub async fn startup_check(db: Database, keys: Arc<dyn MasterKey>) -> Result<(), StartupError> {
    let check = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        verify(&db, keys.as_ref()),
    )
    .await;
    match check {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e @ VerifyError::UnknownKeys { .. })) => Err(StartupError::refused(e)),
        Ok(Err(VerifyError::Unreadable(_))) | Err(_) => {
            tracing::warn!("vault master key not checked yet: the database is unreachable");
            Ok(())
        }
    }
}

/// Health follows the master key too: NOT_SERVING (and the reason in the
/// log) while the stored data keys name a master key the keyring lacks.
#[derive(Debug)]
pub struct KeyProbe {
    db: Database,
    keys: Arc<dyn MasterKey>,
}

impl KeyProbe {
    pub fn new(db: Database, keys: Arc<dyn MasterKey>) -> Self {
        Self { db, keys }
    }
}

impl Probe for KeyProbe {
    fn name(&self) -> &str {
        "vault master key"
    }

    fn check(&self) -> ProbeFuture<'_> {
        Box::pin(async move {
            verify(&self.db, self.keys.as_ref())
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// What a master-key rotation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RewrapReport {
    /// Data keys re-wrapped under the current master key.
    pub rewrapped: u64,
    /// Tenants whose keys were re-wrapped.
    pub tenants: u64,
}

/// Re-wraps every data key not wrapped under `keys`' current master key.
/// Safe to run twice at once and to run again after a failure (a key
/// already re-wrapped is skipped under its row lock). `db` needs identity's
/// platform role (for the scan; each re-wrap runs in its tenant under RLS).
pub async fn rotate_master_key(db: &Database, keys: &dyn MasterKey) -> ApiResult<RewrapReport> {
    let current = keys.current_id().to_owned();
    let mut report = RewrapReport::default();
    let mut after: Option<(TenantId, i32)> = None;
    let mut last_tenant = None;
    loop {
        let ctx = TenantContext::system_platform(ROTATION);
        let mut scan = db.begin_platform(&ctx).await?;
        let page = storage::wrapped_elsewhere(&mut scan, &current, after, REWRAP_PAGE).await?;
        scan.commit().await?;
        for &(tenant, version) in &page {
            if rewrap_one(db, keys, tenant, version).await? {
                report.rewrapped += 1;
                if last_tenant != Some(tenant) {
                    report.tenants += 1;
                    last_tenant = Some(tenant);
                }
            }
        }
        if page.len() < REWRAP_PAGE as usize {
            return Ok(report);
        }
        after = page.last().copied();
    }
}

async fn rewrap_one(
    db: &Database,
    keys: &dyn MasterKey,
    tenant: TenantId,
    version: i32,
) -> ApiResult<bool> {
    let ctx = TenantContext::system(tenant, ROTATION);
    let mut tx = db.begin(&ctx).await?;
    let Some(row) = storage::key_row(&mut tx, version, true).await? else {
        tx.finish_read();
        return Ok(false);
    };
    if row.master_key_id == keys.current_id() {
        tx.finish_read();
        return Ok(false);
    }
    let key = storage::unwrap_row(keys, tenant, &row)?;
    let wrapped = keys
        .wrap(&key, &data_key_aad(tenant, version))
        .map_err(ApiError::internal)?;
    storage::rewrap(&mut tx, version, &wrapped).await?;
    tx.audit(
        "data_key.rewrap",
        "data_key",
        version,
        serde_json::json!({ "from": row.master_key_id, "to": wrapped.master_key_id }),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(%tenant, key_version = version, to = %wrapped.master_key_id, "vault: data key re-wrapped");
    Ok(true)
}

/// What a data-key rotation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RotateReport {
    /// The tenant's data key version now in use.
    pub key_version: i32,
    /// Secrets re-encrypted under it.
    pub reencrypted: u64,
    /// Transactions that did so (each at most one batch).
    pub batches: u64,
    /// Older key versions removed.
    pub retired: u64,
}

/// Rotates `tenant`'s data key: a new version, then every secret under an
/// older one re-encrypted, `batch` secrets per transaction, then the
/// unused versions removed. Reads and writes go on meanwhile.
pub async fn rotate_data_key(
    db: &Database,
    keys: &dyn MasterKey,
    tenant: TenantId,
    batch: i64,
) -> ApiResult<RotateReport> {
    let batch = batch.clamp(1, MAX_BATCH);
    let ctx = TenantContext::system(tenant, ROTATION);
    let mut tx = db.begin(&ctx).await?;
    let new = storage::add_version(&mut tx, keys).await?;
    tx.audit(
        "data_key.rotate",
        "data_key",
        new.version,
        serde_json::json!({ "key_version": new.version }),
    )
    .await?;
    tx.commit().await?;
    let mut report = RotateReport {
        key_version: new.version,
        ..RotateReport::default()
    };
    // A secret written under an older version while this ran (a writer that
    // read the newest version just before the new one committed) is found by
    // the next pass; the removal below only takes versions nothing uses.
    for _pass in 0..3 {
        loop {
            let done = reencrypt_batch(db, keys, &ctx, &new, batch).await?;
            if done == 0 {
                break;
            }
            report.reencrypted += done;
            report.batches += 1;
        }
        let mut tx = db.begin(&ctx).await?;
        match storage::retire_older(&mut tx, new.version).await {
            Ok(retired) => {
                if retired > 0 {
                    tx.audit(
                        "data_key.retire",
                        "data_key",
                        new.version,
                        serde_json::json!({ "retired": retired, "key_version": new.version }),
                    )
                    .await?;
                }
                tx.commit().await?;
                report.retired += retired;
                break;
            }
            // A secret under an older version committed between the last
            // batch and the removal (the foreign key refused): go again.
            Err(e) if e.code() == tonic::Code::FailedPrecondition => continue,
            Err(e) => return Err(e),
        }
    }
    tracing::info!(
        %tenant,
        key_version = report.key_version,
        reencrypted = report.reencrypted,
        batches = report.batches,
        retired = report.retired,
        "vault: data key rotated"
    );
    Ok(report)
}

/// Re-encrypts up to `batch` of the tenant's secrets still under a version
/// older than `new`, in one transaction; returns how many.
async fn reencrypt_batch(
    db: &Database,
    keys: &dyn MasterKey,
    ctx: &TenantContext,
    new: &storage::TenantKey,
    batch: i64,
) -> ApiResult<u64> {
    let tenant = ctx.tenant_id()?;
    let mut tx = db.begin(ctx).await?;
    let ids = connections::under_older_key(&mut tx, new.version, batch).await?;
    if ids.is_empty() {
        tx.finish_read();
        return Ok(0);
    }
    for &id in &ids {
        let Some(row) = connections::sealed(&mut tx, id, true).await? else {
            continue;
        };
        let secret = crate::connections::open_secret(keys, tenant, &row)?;
        let aad = secret_aad(tenant, id.uuid(), row.connection.secret_version);
        let ciphertext = new.key.seal(&secret, &aad).map_err(ApiError::internal)?;
        connections::reencrypt(&mut tx, id, &ciphertext, new.version).await?;
    }
    tx.audit(
        "data_key.reencrypt",
        "data_key",
        new.version,
        serde_json::json!({ "connections": ids.len(), "key_version": new.version }),
    )
    .await?;
    tx.commit().await?;
    Ok(ids.len() as u64)
}

//! The all-in-one Mosaic suite: every service on one server and one port, for
//! local use and the black-box tests, plus the operator commands. Production
//! runs each service's own binary; both are built by the same code
//! (`mosaic_server::suite`) from [`SERVICES`].
//!
//! - [`SERVICES`]: every service, in migration order. Adding a service is its
//!   crate, one line here, its migrations and its manifests.
//! - [`run`]: serve the suite on a bound listener until a shutdown future fires.
//! - [`migrate`]: bootstrap roles and schemas, then apply every migration.
//! - [`purge`]: remove what expired, tenant by tenant.
//! - [`rotate_master_key`] and [`rotate_data_key`]: the vault's rotations
//!   (`mosaic vault ...`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use mosaic_core::{Env, StartupError, TenantId};
use mosaic_identity::PLATFORM_ROLE;
use mosaic_identity::purge::{PLATFORM_SCOPE, tenant_ids};
use mosaic_server::{PurgeTenant, ServiceModule, Shutdown, suite};
use tokio::net::TcpListener;

/// Every service of the suite, in migration order.
pub const SERVICES: &[&'static dyn ServiceModule] = &[
    &mosaic_identity::Identity,
    &mosaic_crm::Crm,
    &mosaic_agents::Agents,
    &mosaic_billing::Billing,
    &mosaic_conversations::Conversations,
];

/// Serves every service on `listener` until `shutdown` completes, then drains
/// (see `mosaic_server::suite::run`). `stop` fires when draining starts.
pub async fn run(
    env: &Env,
    listener: TcpListener,
    stop: Shutdown,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartupError> {
    suite::run(SERVICES, env, listener, stop, shutdown).await
}

/// Creates the roles, database and schemas of every service (idempotent),
/// then applies every pending migration; returns `(schema, version)` of each
/// migration applied now.
pub async fn migrate(env: &Env) -> Result<Vec<(String, i64)>, StartupError> {
    suite::migrate(SERVICES, env).await
}

/// What one `mosaic purge` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PurgeReport {
    /// Tenants visited.
    pub tenants: u64,
    /// `<service>.<what>` → how many, e.g. `crm.contacts`.
    pub removed: BTreeMap<String, u64>,
}

impl PurgeReport {
    /// How many of `what` (`crm.contacts`) were removed.
    pub fn removed(&self, what: &str) -> u64 {
        self.removed.get(what).copied().unwrap_or_default()
    }
}

/// Tenants listed per page while purging.
const PURGE_PAGE: i64 = 500;

/// Walks every tenant identity knows (and the platform scope) and runs each
/// service's purge for it (see `mosaic_crm::purge`). Connects as the runtime
/// roles, so RLS fences each tenant's purge like any request. Safe to run
/// twice at once (each delete takes only rows still there).
pub async fn purge(
    env: &Env,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<PurgeReport, StartupError> {
    let mut pools = Vec::new();
    let mut purgers: Vec<(&str, Arc<dyn PurgeTenant>)> = Vec::new();
    let mut registry = None;
    for module in SERVICES {
        if let Some(db) = suite::connect(*module, env)? {
            if let Some(purger) = module.purger(&db) {
                purgers.push((module.name(), purger));
            }
            if module.name() == mosaic_identity::Identity.name() {
                // identity's tenants are the ones to walk.
                registry = Some(db.clone().with_platform_role(PLATFORM_ROLE));
            }
            pools.push(db);
        }
    }
    let registry = registry.ok_or_else(|| StartupError::refused("the suite has no identity"))?;

    let mut report = PurgeReport::default();
    let purge_one = async |report: &mut PurgeReport, tenant: TenantId| {
        for (service, purger) in &purgers {
            let removed = purger.purge_tenant(tenant, now).await.map_err(|e| {
                StartupError::refused(format_args!("purging {service} of tenant {tenant}: {e}"))
            })?;
            for (what, count) in removed {
                *report
                    .removed
                    .entry(format!("{service}.{what}"))
                    .or_default() += count;
            }
        }
        Ok::<(), StartupError>(())
    };
    purge_one(&mut report, PLATFORM_SCOPE).await?;
    let mut after = None;
    loop {
        let ids = tenant_ids(&registry, after, PURGE_PAGE)
            .await
            .map_err(|e| StartupError::refused(format_args!("listing tenants: {e}")))?;
        for &tenant in &ids {
            purge_one(&mut report, tenant).await?;
            report.tenants += 1;
        }
        if ids.len() < PURGE_PAGE as usize {
            break;
        }
        after = ids.last().copied();
    }
    for pool in pools {
        pool.close().await;
    }
    Ok(report)
}

/// identity's pool, logged in as its runtime role, able to switch to its
/// platform role (the vault's operator scans).
fn identity_pool(env: &Env) -> Result<mosaic_db::Database, StartupError> {
    suite::connect(&mosaic_identity::Identity, env)?
        .map(|db| db.with_platform_role(PLATFORM_ROLE))
        .ok_or_else(|| StartupError::refused("identity has no database"))
}

/// `mosaic vault rotate-master-key`: re-wraps every tenant's data keys under
/// the current `MOSAIC_VAULT_MASTER_KEY` (the old key must be listed in
/// `MOSAIC_VAULT_PREVIOUS_MASTER_KEYS`). Secrets are not touched.
pub async fn rotate_master_key(
    env: &Env,
) -> Result<mosaic_identity::vault::rotation::RewrapReport, StartupError> {
    let keys = mosaic_identity::vault::Keyring::from_env(env)?;
    let db = identity_pool(env)?;
    let report = mosaic_identity::vault::rotation::rotate_master_key(&db, &keys).await;
    db.close().await;
    report.map_err(|e| StartupError::refused(format_args!("rotating the master key: {e}")))
}

/// `mosaic vault rotate-data-key --tenant <id>`: a new data key for the
/// tenant, its secrets re-encrypted `batch` per transaction, online.
pub async fn rotate_data_key(
    env: &Env,
    tenant: TenantId,
    batch: i64,
) -> Result<mosaic_identity::vault::rotation::RotateReport, StartupError> {
    let keys = mosaic_identity::vault::Keyring::from_env(env)?;
    let db = identity_pool(env)?;
    let report = mosaic_identity::vault::rotation::rotate_data_key(&db, &keys, tenant, batch).await;
    db.close().await;
    report.map_err(|e| {
        StartupError::refused(format_args!(
            "rotating the data key of tenant {tenant}: {e}"
        ))
    })
}

//! [`ServiceModule`]: one Mosaic service, described once. The kit
//! ([`crate::suite`]) builds every process from a list of them: each service's
//! own binary from a list of one, the all-in-one `mosaic` binary (and the
//! black-box tests) from the list of all. What a service says here is all
//! the kit needs:
//!
//! - its name (`crm`): its schema and runtime role, its `MOSAIC_CRM_*`
//!   settings, its metrics label, its binary `mosaic-crm`;
//! - its PostgreSQL schema, if it has one: the kit then connects its pool
//!   (lazily), registers the pool's metrics, probes it for health, and closes
//!   it at shutdown;
//! - nothing for its cache: every service gets its own [`Deps::cache`]
//!   (keys `mosaic:{<tenant>}:<name>:...`) on the process's one Redis handle;
//! - the methods callable without a token;
//! - [`ServiceModule::build`]: its gRPC services (added with
//!   [`add_services!`](crate::add_services), which applies the message size
//!   limits and records each service's name from its generated
//!   `NamedService::NAME`), any probes of its own, and background tasks
//!   (sweepers) that run while the process serves;
//! - [`ServiceModule::purger`]: what `mosaic purge` runs for each tenant.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use mosaic_api::ApiResult;
use mosaic_cache::{Cache, Redis};
use mosaic_core::{Env, Metrics, Probe, StartupError, TenantId};
use mosaic_db::access::AccessView;
use mosaic_db::purge::Expiring;
use mosaic_db::{Database, ServiceSchema};
use mosaic_tenant::TokenSettings;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;

use crate::peers::Peers;
use crate::shutdown::Shutdown;

/// A boxed future, for the object-safe traits here.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One Mosaic service. Implement it on a unit struct in the service crate
/// (`pub struct Crm;`) and list it in the suite (`services/mosaic/src/lib.rs`).
pub trait ServiceModule: Send + Sync + 'static {
    /// The service's name: `identity`, `crm`, ...
    fn name(&self) -> &'static str;

    /// Its PostgreSQL schema, runtime role and migrations, if it has any.
    fn schema(&self) -> Option<ServiceSchema> {
        None
    }

    /// Full method paths (or path prefixes) callable without a bearer token.
    fn public_methods(&self) -> &'static [&'static str] {
        &[]
    }

    /// Full method paths a token of a deleted tenant may still call (every
    /// other method refuses it: `mosaic_db::access`).
    fn allowed_for_deleted_tenants(&self) -> &'static [&'static str] {
        &[]
    }

    /// The running service: its gRPC services and extra probes. Called once
    /// per process; nothing may block or connect here (connections are lazy,
    /// so a process starts while its stores are down and reports NOT_SERVING).
    fn build(&self, deps: &Deps) -> Result<Service, StartupError>;

    /// What `mosaic purge` runs for each tenant, if the service keeps
    /// anything that expires.
    fn purger(&self, db: &Database) -> Option<Arc<dyn PurgeTenant>> {
        let _ = db;
        None
    }
}

/// What the kit hands a service it builds.
#[derive(Debug, Clone)]
pub struct Deps {
    /// Every setting (the process environment, with flags and test settings
    /// laid over it).
    pub env: Env,
    /// The service's pool, logged in as its runtime role, when it has a schema.
    pub db: Option<Database>,
    pub metrics: Metrics,
    /// The service's cache-aside on the process's Redis (keys
    /// `mosaic:{<tenant>}:<service>:...`); shares one breaker with the rate
    /// limiter, and is off (every lookup `Unavailable`) with
    /// `MOSAIC_CACHE_TTL_SECS=0`. See `mosaic_cache::cache`.
    pub cache: Cache,
    /// The process's one Redis handle (the limiter's and the caches'), for
    /// a limit of the service's own (`mosaic_cache::RateLimiter::named`).
    pub redis: Redis,
    pub tokens: TokenSettings,
    /// The process's view of tenant states and revocations (what the auth
    /// layer decides with), for a path that learns its tenant otherwise.
    pub access: Arc<AccessView>,
    /// Fires when draining starts: long streams end on it.
    pub stop: Shutdown,
    /// Channels to the other services it calls.
    pub peers: Peers,
    /// The largest message a service decodes or encodes.
    pub max_message_bytes: usize,
}

impl Deps {
    /// The service's pool; an error for a service that declared no schema.
    pub fn db(&self) -> Result<Database, StartupError> {
        self.db.clone().ok_or_else(|| {
            StartupError::refused("this service has no database schema but asked for its pool")
        })
    }
}

/// Adds one gRPC server to the process's router.
pub(crate) type AddRoute = Box<dyn FnOnce(&mut RoutesBuilder) + Send>;

/// A background task: started when serving starts, told to stop by the
/// [`Shutdown`] it is given (it should return soon after), and dropped
/// at the drain deadline if it has not.
pub(crate) type Task = (&'static str, BoxFuture<'static, ()>);

/// A check the kit runs once before it serves: an error stops the process.
pub(crate) type StartupCheck = (&'static str, BoxFuture<'static, Result<(), StartupError>>);

/// A built service: its gRPC routes and the probes its health follows.
pub struct Service {
    routes: Vec<AddRoute>,
    names: Vec<&'static str>,
    probes: Vec<Arc<dyn Probe>>,
    tasks: Vec<Task>,
    checks: Vec<StartupCheck>,
    stop: Shutdown,
    max_message_bytes: usize,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("names", &self.names)
            .field(
                "probes",
                &self.probes.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Service {
    pub fn new(deps: &Deps) -> Self {
        Self {
            routes: Vec::new(),
            names: Vec::new(),
            probes: Vec::new(),
            tasks: Vec::new(),
            checks: Vec::new(),
            stop: deps.stop.clone(),
            max_message_bytes: deps.max_message_bytes,
        }
    }

    /// The limit [`add_services!`](crate::add_services) gives each server.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Adds a generated gRPC server; its name comes from `NamedService`.
    /// Use [`add_services!`](crate::add_services), which sets the size limits first.
    pub fn add<S>(&mut self, server: S) -> &mut Self
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes
            .push(Box::new(move |routes: &mut RoutesBuilder| {
                routes.add_service(server);
            }));
        self
    }

    /// A probe of the service's own (the kit already probes its database).
    pub fn probe(&mut self, probe: Arc<dyn Probe>) -> &mut Self {
        self.probes.push(probe);
        self
    }

    /// A task to run beside the server (e.g. a sweeper of expired holds):
    /// `run` gets the [`Shutdown`] that fires when draining starts and
    /// should return soon after it fires.
    pub fn background<F>(
        &mut self,
        name: &'static str,
        run: impl FnOnce(Shutdown) -> F,
    ) -> &mut Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.push((name, Box::pin(run(self.stop.clone()))));
        self
    }

    /// A check to run once before serving (identity's: the vault's master
    /// key unwraps the stored data keys); an error stops the process with
    /// its message. A check must not wait long for a store that is down:
    /// a process starts while its stores are down (leave the rest to a probe).
    pub fn startup_check<F>(&mut self, name: &'static str, check: F) -> &mut Self
    where
        F: Future<Output = Result<(), StartupError>> + Send + 'static,
    {
        self.checks.push((name, Box::pin(check)));
        self
    }

    /// The gRPC service names, in the order they were added.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    pub(crate) fn into_parts(self) -> Parts {
        Parts {
            routes: self.routes,
            names: self.names,
            probes: self.probes,
            tasks: self.tasks,
            checks: self.checks,
        }
    }
}

/// What the kit takes from a built [`Service`].
pub(crate) struct Parts {
    pub(crate) routes: Vec<AddRoute>,
    pub(crate) names: Vec<&'static str>,
    pub(crate) probes: Vec<Arc<dyn Probe>>,
    pub(crate) tasks: Vec<Task>,
    pub(crate) checks: Vec<StartupCheck>,
}

/// Adds generated gRPC servers to a [`Service`], each with the message size
/// limits (a larger request is answered OUT_OF_RANGE by tonic):
///
/// ```text
/// let mut service = Service::new(deps);
/// mosaic_server::add_services!(service,
///     CompanyServiceServer::new(companies::Companies::new(db.clone())),
///     ContactServiceServer::new(contacts::Contacts::new(db.clone())),
/// );
/// ```
#[macro_export]
macro_rules! add_services {
    ($service:expr, $($server:expr),+ $(,)?) => {{
        let max = $service.max_message_bytes();
        $($service.add(
            $server
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );)+
    }};
}

/// What a service removes for one tenant in `mosaic purge`.
pub trait PurgeTenant: Send + Sync + 'static {
    /// Removes what expired by `now`; returns `(what, how many)`, e.g.
    /// `("contacts", 3)`.
    fn purge_tenant(
        &self,
        tenant: TenantId,
        now: DateTime<Utc>,
    ) -> BoxFuture<'_, ApiResult<Vec<(&'static str, u64)>>>;
}

/// A service's part of `mosaic purge` when it is expired rows of its tables
/// (`mosaic_db::purge`): reports `(table, count)` per table, and `request_ids`.
#[derive(Debug)]
pub struct ExpiredRows {
    db: Database,
    tables: &'static [Expiring],
}

impl ExpiredRows {
    pub fn new(db: Database, tables: &'static [Expiring]) -> Self {
        Self { db, tables }
    }
}

impl PurgeTenant for ExpiredRows {
    fn purge_tenant(
        &self,
        tenant: TenantId,
        now: DateTime<Utc>,
    ) -> BoxFuture<'_, ApiResult<Vec<(&'static str, u64)>>> {
        Box::pin(async move {
            let (counts, requests) =
                mosaic_db::purge::purge_expired(&self.db, tenant, now, self.tables).await?;
            let mut removed: Vec<(&'static str, u64)> = self
                .tables
                .iter()
                .map(|expiring| expiring.table)
                .zip(counts)
                .collect();
            removed.push(("request_ids", requests));
            Ok(removed)
        })
    }
}

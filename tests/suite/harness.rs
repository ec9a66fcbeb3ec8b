//! The suite under test, and helpers to call it.
//!
//! [`app`] starts the suite once, on its own thread and runtime (so it
//! outlives every test's runtime), after bootstrapping and migrating the
//! database, through the same code and settings reader production uses
//! (`mosaic::run` with an [`Env`]). Tests open their own channels with
//! [`App::channel`].
//!
//! `MOSAIC_TEST_LOG=<filter>` (e.g. `info` or `mosaic_db=debug`) shows the
//! suite's logs in the test output, as text.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use mosaic_core::Env;
use mosaic_core::TenantId;
use mosaic_db::DbConfig;
use mosaic_proto::identity::{
    CreateTenantRequest, ListMembersRequest, Plan, Tenant,
    member_service_client::MemberServiceClient, tenant_service_client::TenantServiceClient,
};
use mosaic_server::Shutdown;
use mosaic_tenant::{AuthConfig, Claims, TokenSettings, TokenSigner};
use sqlx::{Connection, PgConnection};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;
use uuid::Uuid;

pub(crate) struct App {
    pub(crate) addr: SocketAddr,
    pub(crate) auth: AuthConfig,
    signer: TokenSigner,
    /// The settings the suite runs with.
    pub(crate) env: Env,
}

static APP: OnceLock<App> = OnceLock::new();

/// The vault's master key of test runs without one configured (tests only:
/// 32 bytes of base64).
pub(crate) const TEST_MASTER_KEY: &str = "dGVzdC1tYXN0ZXIta2V5LW9mLW1vc2FpYy10ZXN0cyE=";
/// The key the master-key rotation test rotates to (and back from): the suite
/// holds it as a previous key, so reads work whichever wraps a data key.
pub(crate) const TEST_MASTER_KEY_NEXT: &str = "bmV4dC1tYXN0ZXIta2V5LW9mLW1vc2FpYy10ZXN0cyE=";
/// The older keys the suite holds: the test keys, so a database that test
/// runs with and without a configured key used stays readable.
pub(crate) const TEST_PREVIOUS_KEYS: &str =
    "dGVzdC1tYXN0ZXIta2V5LW9mLW1vc2FpYy10ZXN0cyE=,bmV4dC1tYXN0ZXIta2V5LW9mLW1vc2FpYy10ZXN0cyE=";

/// The master key the suite wraps with: the configured one (`.data/mosaic.env`,
/// the key `deploy/local/run.sh` serves the same database with), else
/// [`TEST_MASTER_KEY`].
pub(crate) fn master_key() -> String {
    Env::process()
        .get("MOSAIC_VAULT_MASTER_KEY")
        .ok()
        .flatten()
        .unwrap_or_else(|| TEST_MASTER_KEY.to_owned())
}

/// The test settings: the process environment (the local defaults), with a
/// token key made for this run, no rate limits, no metrics port, quick
/// probes and drains, and small pools: four services' pools at their
/// production size (16 + 4 read connections each) plus the suites some tests
/// start of their own would pass PostgreSQL's 100 connections, and a test
/// would see DB_UNAVAILABLE.
pub(crate) fn env() -> Env {
    let secret: String = (0..4)
        .map(|_| Uuid::new_v4().simple().to_string())
        .collect();
    Env::process()
        .with("MOSAIC_JWT_HS256_SECRET", secret)
        .with("MOSAIC_JWT_PUBLIC_KEY", "")
        .with("MOSAIC_JWT_ISSUER", "mosaic-test")
        .with("MOSAIC_TOKEN_TTL_SECS", "600")
        .with("MOSAIC_RATE_LIMIT_PER_SECOND", "0")
        .with("MOSAIC_METRICS_ADDR", "off")
        .with("MOSAIC_PROBE_INTERVAL_MS", "200")
        .with("MOSAIC_SHUTDOWN_TIMEOUT_SECS", "5")
        .with("MOSAIC_DB_MAX_CONNECTIONS", "10")
        // A loaded 2-core CI machine (the purge test walks every tenant the
        // local database has) can keep a pool busy past the 2 s default.
        .with("MOSAIC_DB_ACQUIRE_TIMEOUT_MS", "10000")
        .with("MOSAIC_DB_MIN_CONNECTIONS", "0")
        .with("MOSAIC_DB_READ_CONNECTIONS", "2")
        .with("MOSAIC_CONVERSATIONS_MONGODB_URL", mongo_url())
        .with("MOSAIC_CONVERSATIONS_CHARGE_SWEEP_MS", "200")
        .with("MOSAIC_CONVERSATIONS_CHARGE_GRACE_MS", "1000")
        // purge.rs drives crm's subject relay itself, round by round.
        .with("MOSAIC_CRM_SUBJECT_RELAY_MS", "3600000")
        .with("MOSAIC_VAULT_MASTER_KEY", master_key())
        .with("MOSAIC_VAULT_MASTER_KEY_FILE", "")
        .with("MOSAIC_VAULT_PREVIOUS_MASTER_KEYS", TEST_PREVIOUS_KEYS)
        .with("MOSAIC_VAULT_REVEAL_PER_SECOND", "0")
}

/// The MongoDB-wire server the setup started, with a database of this test
/// run's own (the local server is slow with many documents; a fresh
/// database per run keeps it fast and the runs apart).
pub(crate) fn mongo_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let server = std::env::var("MOSAIC_TEST_MONGODB_SERVER")
            .unwrap_or_else(|_| "mongodb://127.0.0.1:27017".to_owned());
        format!("{server}/mosaic_test_{}", Uuid::now_v7().simple())
    })
}

/// Drops the databases of test runs that began more than two hours ago
/// (their names carry the UUIDv7 of their start): a run cannot drop its own
/// afterwards (a test binary has no end hook), and a local server that keeps
/// every run's database grows slow. Best effort: an error leaves them.
async fn drop_stale_mongo_databases() {
    let server = mongo_url()
        .rsplit_once('/')
        .map_or("", |(server, _)| server);
    let Ok(client) = mongodb::Client::with_uri_str(server).await else {
        return;
    };
    let Ok(names) = client.list_database_names().await else {
        return;
    };
    let cutoff = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    for name in names {
        let started = name
            .strip_prefix("mosaic_test_")
            .and_then(|id| Uuid::try_parse(id).ok())
            .and_then(|id| id.get_timestamp())
            .map(|ts| {
                let (secs, nanos) = ts.to_unix();
                std::time::UNIX_EPOCH + Duration::new(secs, nanos)
            });
        if started.is_some_and(|at| at < cutoff) {
            let _ = client.database(&name).drop().await;
        }
    }
}

/// Bootstraps and migrates the test database (idempotent; safe in parallel).
pub(crate) async fn migrate(env: &Env) {
    mosaic::migrate(env).await.expect("migrate");
}

/// Shows the suite's logs when `MOSAIC_TEST_LOG` names a filter.
fn test_logging() {
    if let Ok(filter) = std::env::var("MOSAIC_TEST_LOG")
        && !filter.trim().is_empty()
    {
        mosaic_server::init_logging(&filter, false).expect("MOSAIC_TEST_LOG is a log filter");
    }
}

pub(crate) fn app() -> &'static App {
    APP.get_or_init(|| {
        test_logging();
        let env = env();
        let suite_env = env.clone();
        let tokens = TokenSettings::from_env(&env).expect("token settings");
        let (tx, rx) = std::sync::mpsc::channel();
        let auth = tokens.verify.clone();
        let signer = tokens.signer().expect("signer");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                migrate(&suite_env).await;
                drop_stale_mongo_databases().await;
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                tx.send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                mosaic::run(
                    &suite_env,
                    listener,
                    Shutdown::new(),
                    std::future::pending(),
                )
                .await
                .expect("suite");
            });
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("suite did not start");
        App {
            addr,
            auth,
            signer,
            env,
        }
    })
}

impl App {
    /// A channel on the calling test's runtime.
    pub(crate) fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect_lazy()
    }

    pub(crate) fn token(&self, tenant: Option<TenantId>, sub: &str, roles: &[&str]) -> String {
        self.token_for(tenant, sub, roles, Duration::from_secs(600))
    }

    /// A token valid for `ttl` only.
    pub(crate) fn token_for(
        &self,
        tenant: Option<TenantId>,
        sub: &str,
        roles: &[&str],
        ttl: Duration,
    ) -> String {
        let claims = Claims::new(
            &self.auth,
            sub.to_owned(),
            tenant,
            roles.iter().map(|r| (*r).to_owned()).collect(),
            ttl,
        );
        self.signer.sign(&claims).expect("sign")
    }

    pub(crate) fn platform_token(&self) -> String {
        self.token(None, "platform:tests", &["platform_admin"])
    }

    /// A new tenant with a fresh owner; returns it with an owner token.
    pub(crate) async fn new_tenant(&self) -> TestTenant {
        let email = format!("owner-{}@example.com", Uuid::new_v4().simple());
        let tenant = TenantServiceClient::new(self.channel())
            .create_tenant(authed(
                CreateTenantRequest {
                    tenant: Some(Tenant {
                        display_name: "Acme".into(),
                        plan: Plan::Pro as i32,
                        ..Default::default()
                    }),
                    owner_email: email.clone(),
                    ..Default::default()
                },
                &self.platform_token(),
            ))
            .await
            .expect("create tenant")
            .into_inner();
        let id = TenantId::from(tenant.tenant_id.parse::<Uuid>().expect("tenant id"));
        // The owner's user id, to mint a token in its name.
        let probe = self.token(Some(id), "user:probe", &["owner"]);
        let members = MemberServiceClient::new(self.channel())
            .list_members(authed(ListMembersRequest::default(), &probe))
            .await
            .expect("list members")
            .into_inner()
            .members;
        let owner: Uuid = members[0].user_id.parse().expect("user id");
        TestTenant {
            id,
            owner,
            owner_token: self.token(Some(id), &format!("user:{owner}"), &["owner"]),
            tenant,
        }
    }

    /// A superuser connection to the test database, for looking behind the API.
    pub(crate) async fn admin_db(&self) -> PgConnection {
        let admin = self
            .env
            .url(
                "MOSAIC_ADMIN_DATABASE_URL",
                "postgres://mosaic_admin:mosaic-local@127.0.0.1:5432/postgres",
            )
            .expect("admin url");
        let opts: sqlx::postgres::PgConnectOptions = admin.expose().parse().expect("admin url");
        let identity: sqlx::postgres::PgConnectOptions = self
            .db_config("identity")
            .url
            .expose()
            .parse()
            .expect("identity url");
        let database = identity.get_database().unwrap_or("mosaic").to_owned();
        PgConnection::connect_with(&opts.database(&database))
            .await
            .expect("admin connection")
    }

    /// A service's database settings, as the suite reads them.
    pub(crate) fn db_config(&self, service: &str) -> DbConfig {
        DbConfig::from_env(&self.env, service).expect("db config")
    }

    /// A connection as the identity runtime role.
    pub(crate) async fn identity_role_db(&self) -> PgConnection {
        let url = self.db_config("identity").url;
        PgConnection::connect(url.expose())
            .await
            .expect("runtime connection")
    }
}

pub(crate) struct TestTenant {
    pub(crate) id: TenantId,
    pub(crate) owner: Uuid,
    pub(crate) owner_token: String,
    pub(crate) tenant: Tenant,
}

impl TestTenant {
    /// A token for this tenant with the given role and a fresh principal.
    pub(crate) fn token(&self, role: &str) -> String {
        app().token(Some(self.id), &format!("user:{}", Uuid::now_v7()), &[role])
    }
}

/// A request carrying `authorization: Bearer <token>`.
pub(crate) fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    req
}

/// Asserts the code and `ErrorInfo.reason` of a failed call.
#[track_caller]
pub(crate) fn assert_error(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let info = status.get_error_details();
    let got = info
        .error_info()
        .map(|i| i.reason.as_str())
        .unwrap_or_default();
    assert_eq!(got, reason, "unexpected reason: {status:?}");
    assert_eq!(info.error_info().map(|i| i.domain.as_str()), Some("mosaic"));
}

/// The fields named by `google.rpc.BadRequest`.
pub(crate) fn bad_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// Asserts INVALID_ARGUMENT naming exactly `field` among its violations.
#[track_caller]
pub(crate) fn assert_bad_field(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields = bad_fields(status);
    assert!(
        fields.iter().any(|f| f == field),
        "expected {field} in {fields:?}"
    );
}

pub(crate) use crate::ports::child_port;

/// A suite of its own with `env` (the shared suite's settings, e.g. its
/// token key, plus overrides such as another Redis), and a channel to it.
/// It shares the database, so tenants made through [`app`] exist in it.
pub(crate) async fn suite_with(env: Env) -> Channel {
    // Few connections: the shared suite holds most of what PostgreSQL allows.
    let env = env
        .with("MOSAIC_DB_MAX_CONNECTIONS", "4")
        .with("MOSAIC_DB_READ_CONNECTIONS", "1");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        mosaic::run(&env, listener, Shutdown::new(), std::future::pending()).await
    });
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

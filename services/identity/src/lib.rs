//! The identity service: tenants, users and memberships, API keys, the
//! exchange of an API key for a short-lived token, and the credentials vault
//! (connections). Schema `identity`, runtime role `mosaic_identity`.
//!
//! Layout: one module per resource, each with its handlers (parse → storage
//! → map) and a `storage` submodule holding its SQL: [`tenants`],
//! [`members`], [`api_keys`], [`tokens`], [`connections`]; [`vault`] is the
//! vault's envelope encryption (master key, data keys, AEAD) and its
//! operator work (`vault::rotation`); [`audit`] serves the audit trail,
//! [`purge`] is identity's part of `mosaic purge` (and the tenant list it
//! walks), [`ids`] the id newtypes. [`Identity`] describes the service to the kit.

use std::sync::Arc;
use std::time::Duration;

use mosaic_core::{Context as _, StartupError};
use mosaic_db::{Database, Migrations, ServiceSchema};
use mosaic_proto::identity::{
    api_key_service_server::ApiKeyServiceServer, audit_service_server::AuditServiceServer,
    connection_service_server::ConnectionServiceServer, member_service_server::MemberServiceServer,
    tenant_service_server::TenantServiceServer, token_service_server::TokenServiceServer,
};
use mosaic_server::{Deps, PurgeTenant, Service, ServiceModule, add_services};
use mosaic_tenant::{AuthConfig, TokenSigner};

mod access_log;
pub mod api_keys;
pub mod audit;
pub mod connections;
pub mod ids;
pub mod members;
pub mod purge;
pub mod tenants;
pub mod tokens;
pub mod vault;

pub static MIGRATIONS: Migrations = sqlx::migrate!("../../migrations/identity");

/// The role a ListTenants transaction switches to (see the migration).
pub const PLATFORM_ROLE: &str = "mosaic_identity_platform";

pub const SCHEMA: ServiceSchema = ServiceSchema {
    name: "identity",
    role: "mosaic_identity",
    extra_roles: &[PLATFORM_ROLE],
    migrations: &MIGRATIONS,
    // Before audit_events, idempotency_keys and the fencing moved into the
    // migrator (the same objects, written once).
    superseded: &[
        (
            1,
            "9794b7741ce9dc582aab27f4b0b8ac307074a3088b912a25ca2ff56a78cf5c79",
        ),
        (
            2,
            "3473e99f1f73d3c470523852328a57f60a57dc689a0283eb383082eae969a570",
        ),
    ],
};

/// Methods callable without a bearer token: the API key is the credential.
pub const PUBLIC_METHODS: &[&str] = &["/mosaic.identity.v1.TokenService/ExchangeApiKey"];

/// What a deleted tenant's owner can still do: see it, and undelete it.
pub const ALLOWED_FOR_DELETED_TENANTS: &[&str] = &[
    "/mosaic.identity.v1.TenantService/GetTenant",
    "/mosaic.identity.v1.TenantService/DeleteTenant",
    "/mosaic.identity.v1.TenantService/UndeleteTenant",
];

/// `MOSAIC_TOKEN_TTL_SECS`: lifetime of exchanged tokens (default 900).
pub const TOKEN_TTL_SECS: &str = "MOSAIC_TOKEN_TTL_SECS";

/// What the token exchange needs besides the database.
#[derive(Debug, Clone)]
pub struct TokenIssuer {
    /// Signs exchanged tokens; its issuer and audience come from `auth`.
    pub signer: TokenSigner,
    pub auth: AuthConfig,
    /// Lifetime of an exchanged token when the request names none.
    pub default_ttl: Duration,
}

/// The identity service, for the kit.
#[derive(Debug, Clone, Copy)]
pub struct Identity;

impl ServiceModule for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn schema(&self) -> Option<ServiceSchema> {
        Some(SCHEMA)
    }

    fn public_methods(&self) -> &'static [&'static str] {
        PUBLIC_METHODS
    }

    fn allowed_for_deleted_tenants(&self) -> &'static [&'static str] {
        ALLOWED_FOR_DELETED_TENANTS
    }

    fn build(&self, deps: &Deps) -> Result<Service, StartupError> {
        let db = deps.db()?.with_platform_role(PLATFORM_ROLE);
        let issuer = TokenIssuer {
            signer: deps.tokens.signer()?,
            auth: deps.tokens.verify.clone(),
            default_ttl: deps.env.positive_secs(TOKEN_TTL_SECS, 900)?,
        };
        let vault = connections::Vault::from_env(&deps.env, deps.redis.clone())?;
        vault
            .reveals
            .register_metrics(&deps.metrics)
            .context("registering the reveal limit metrics")?;
        let mut service = Service::new(deps);
        service.startup_check(
            "vault master key",
            vault::rotation::startup_check(db.clone(), vault.keys.clone()),
        );
        service.probe(Arc::new(vault::rotation::KeyProbe::new(
            db.clone(),
            vault.keys.clone(),
        )));
        add_services!(
            service,
            ConnectionServiceServer::new(connections::Connections::new(db.clone(), vault)),
            TenantServiceServer::new(tenants::Tenants::new(db.clone())),
            MemberServiceServer::new(members::Members::new(db.clone())),
            ApiKeyServiceServer::new(api_keys::ApiKeys::new(db.clone())),
            TokenServiceServer::new(tokens::Tokens::new(db.clone(), issuer)),
            AuditServiceServer::new(audit::Audit::new(db)),
        );
        Ok(service)
    }

    fn purger(&self, db: &Database) -> Option<Arc<dyn PurgeTenant>> {
        Some(Arc::new(purge::Purge::new(
            db.clone().with_platform_role(PLATFORM_ROLE),
        )))
    }
}

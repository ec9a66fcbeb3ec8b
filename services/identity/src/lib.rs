//! The identity service: tenants, users and memberships, API keys, and the
//! exchange of an API key for a short-lived token. Schema `identity`, runtime
//! role `mosaic_identity`.
//!
//! Layout: one module per resource, each with its handlers (parse → store →
//! map) and a `store` submodule holding its SQL: [`tenants`], [`members`],
//! [`api_keys`], [`tokens`]; [`audit`] serves the audit trail. [`routes`]
//! builds the gRPC router from an [`IdentityState`]; `main.rs` only serves it.

use std::time::Duration;

use mosaic_db::{Database, Migrations, ServiceSchema};
use mosaic_proto::identity::{
    api_key_service_server::ApiKeyServiceServer, audit_service_server::AuditServiceServer,
    member_service_server::MemberServiceServer, tenant_service_server::TenantServiceServer,
    token_service_server::TokenServiceServer,
};
use mosaic_tenant::{AuthConfig, TokenSigner};

pub mod api_keys;
pub mod audit;
pub mod members;
pub mod purge;
pub mod tenants;
pub mod tokens;

pub static MIGRATIONS: Migrations = sqlx::migrate!("../../migrations/identity");

/// The role a ListTenants transaction switches to (see the migration).
pub const PLATFORM_ROLE: &str = "mosaic_identity_platform";

pub const SCHEMA: ServiceSchema = ServiceSchema {
    name: "identity",
    role: "mosaic_identity",
    extra_roles: &[PLATFORM_ROLE],
    migrations: &MIGRATIONS,
};

/// gRPC service names, for health reporting.
pub const SERVICE_NAMES: &[&str] = &[
    "mosaic.identity.v1.TenantService",
    "mosaic.identity.v1.MemberService",
    "mosaic.identity.v1.ApiKeyService",
    "mosaic.identity.v1.TokenService",
    "mosaic.identity.v1.AuditService",
];

/// Methods callable without a bearer token: the API key is the credential.
pub const PUBLIC_METHODS: &[&str] = &["/mosaic.identity.v1.TokenService/ExchangeApiKey"];

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct IdentityState {
    pub db: Database,
    /// Signs exchanged tokens; its issuer and audience come from `auth`.
    pub signer: TokenSigner,
    pub auth: AuthConfig,
    /// Lifetime of an exchanged token when the request names none.
    pub default_token_ttl: Duration,
}

/// The identity router: every identity gRPC service over one state.
pub fn routes(state: IdentityState, max_message_bytes: usize) -> tonic::service::Routes {
    let mut builder = tonic::service::Routes::builder();
    add_routes(&mut builder, state, max_message_bytes);
    builder.routes()
}

/// Adds every identity service to `builder` (the all-in-one binary mounts several services).
pub fn add_routes(
    builder: &mut tonic::service::RoutesBuilder,
    state: IdentityState,
    max_message_bytes: usize,
) {
    macro_rules! limited {
        ($server:expr) => {
            $server
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes)
        };
    }
    let db = state.db.clone();
    builder
        .add_service(limited!(TenantServiceServer::new(tenants::Tenants::new(
            db.clone()
        ))))
        .add_service(limited!(MemberServiceServer::new(members::Members::new(
            db.clone()
        ))))
        .add_service(limited!(ApiKeyServiceServer::new(api_keys::ApiKeys::new(
            db.clone()
        ))))
        .add_service(limited!(TokenServiceServer::new(tokens::Tokens::new(
            state
        ))))
        .add_service(limited!(AuditServiceServer::new(audit::Audit::new(db))));
}

/// Lowercase names of the proto enums as stored in the database.
pub(crate) mod names {
    use mosaic_proto::identity::{Plan, Role as PbRole};
    use mosaic_tenant::Role;

    pub fn plan(p: Plan) -> &'static str {
        match p {
            Plan::Free | Plan::Unspecified => "free",
            Plan::Pro => "pro",
            Plan::Enterprise => "enterprise",
        }
    }

    pub fn plan_from(s: &str) -> Plan {
        match s {
            "pro" => Plan::Pro,
            "enterprise" => Plan::Enterprise,
            _ => Plan::Free,
        }
    }

    pub fn role(r: PbRole) -> Option<Role> {
        match r {
            PbRole::Owner => Some(Role::Owner),
            PbRole::Admin => Some(Role::Admin),
            PbRole::Member => Some(Role::Member),
            PbRole::Viewer => Some(Role::Viewer),
            PbRole::Unspecified => None,
        }
    }

    pub fn role_to_pb(s: &str) -> PbRole {
        match Role::parse(s) {
            Some(Role::Owner) => PbRole::Owner,
            Some(Role::Admin) => PbRole::Admin,
            Some(Role::Member) => PbRole::Member,
            Some(Role::Viewer) => PbRole::Viewer,
            None => PbRole::Unspecified,
        }
    }
}

//! `ConnectionService`: a tenant's integration credentials (the vault). The
//! metadata follows the standard methods; the secret is sealed with the
//! tenant's data key (see [`crate::vault`]) and leaves the service only
//! through RevealSecret, to the service role [`INTEGRATIONS_ROLE`], audited
//! and rate limited.

use std::marker::PhantomData;
use std::sync::Arc;

use mosaic_api::page::{self, PageBinding};
use mosaic_api::rules::{Kind, masked};
use mosaic_api::{AllOk, ApiError, ApiResult, etag, mask::UpdateMask, parse};
use mosaic_cache::{Decision, RateLimitConfig, RateLimiter, Redis};
use mosaic_core::{ConfigError, Env, TenantId};
use mosaic_db::{Changed, Database, Resource, TenantContext, create_once};
use mosaic_proto::StoredEnum;
use mosaic_proto::identity::{
    Connection, ConnectionStatus, CreateConnectionRequest, DeleteConnectionRequest,
    GetConnectionRequest, ListConnectionsRequest, ListConnectionsResponse, Provider,
    ReplaceSecretRequest, RevealSecretRequest, RevealSecretResponse, UndeleteConnectionRequest,
    UpdateConnectionRequest, connection_service_server::ConnectionService,
};
use mosaic_tenant::Role;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use crate::ids::ConnectionId;
use crate::vault::{self, MAX_SECRET_BYTES, MasterKey, secret_aad};

pub(crate) mod storage;

pub(crate) const RESOURCE: Resource<ConnectionId> = Resource {
    kind: Kind {
        name: "connection",
        not_found: "CONNECTION_NOT_FOUND",
        deleted: "CONNECTION_DELETED",
    },
    table: "connections",
    id_column: "connection_id",
    select: storage::SELECT,
    constraints: &[],
    id: PhantomData,
};

/// The service role of integration workers: the only callers of
/// RevealSecret (and, beside admins, of ReplaceSecret).
pub const INTEGRATIONS_ROLE: &str = "svc:integrations";
/// Reason of a secret whose ciphertext does not authenticate.
pub const SECRET_UNREADABLE: &str = "SECRET_UNREADABLE";
/// Reason of a RevealSecret over the tenant's reveal rate.
pub const REVEAL_RATE_LIMITED: &str = "REVEAL_RATE_LIMITED";
/// `MOSAIC_VAULT_REVEAL_PER_SECOND`: RevealSecret calls per second per
/// tenant (default 50; `0` turns the limit off).
pub const REVEAL_PER_SECOND: &str = "MOSAIC_VAULT_REVEAL_PER_SECOND";
/// `MOSAIC_VAULT_REVEAL_BURST`: RevealSecret calls a tenant may make at once
/// (default 100).
pub const REVEAL_BURST: &str = "MOSAIC_VAULT_REVEAL_BURST";

const MAX_NAME: usize = 200;
const MAX_SCOPES: usize = 64;
const MAX_SCOPE_CHARS: usize = 200;
const MAX_METADATA_BYTES: usize = 8 * 1024;
const MAX_REASON: usize = 500;

mosaic_api::patch! {
    /// The writable metadata of a connection, checked (the secret is not
    /// among them: ReplaceSecret writes it).
    pub(crate) struct ConnectionFields / ConnectionPatch {
        display_name: String,
        scopes: Vec<String>,
        status: ConnectionStatus,
        metadata: serde_json::Value,
    }
}

impl ConnectionPatch {
    fn parse(
        connection: &Connection,
        wanted: impl Fn(&str) -> bool,
        creating: bool,
    ) -> ApiResult<Self> {
        let (display_name, scopes, status, metadata) = (
            masked(wanted("display_name"), || {
                parse::name(
                    "connection.display_name",
                    &connection.display_name,
                    MAX_NAME,
                )
            }),
            masked(wanted("scopes"), || {
                scopes("connection.scopes", &connection.scopes)
            }),
            masked(wanted("status"), || {
                let status = parse::enum_or(
                    "connection.status",
                    connection.status,
                    ConnectionStatus::Unspecified,
                )?;
                match status {
                    ConnectionStatus::Unspecified if creating => Ok(ConnectionStatus::Active),
                    ConnectionStatus::Unspecified => {
                        Err(ApiError::invalid_argument("connection.status", "required"))
                    }
                    status => Ok(status),
                }
            }),
            masked(wanted("metadata"), || {
                parse::json_object(
                    "connection.metadata",
                    connection.metadata.as_ref(),
                    MAX_METADATA_BYTES,
                )
            }),
        )
            .all_ok()?;
        Ok(Self {
            display_name,
            scopes,
            status,
            metadata,
        })
    }
}

/// OAuth scopes: at most [`MAX_SCOPES`], each 1..[`MAX_SCOPE_CHARS`]
/// printable ASCII characters without spaces (`crm.objects.contacts.read`,
/// `https://www.googleapis.com/auth/gmail.send`); duplicates dropped.
fn scopes(field: &str, raw: &[String]) -> ApiResult<Vec<String>> {
    if raw.len() > MAX_SCOPES {
        return Err(ApiError::invalid_argument(
            field,
            format!("at most {MAX_SCOPES} scopes"),
        ));
    }
    let mut violations = mosaic_api::Violations::new();
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for (index, scope) in raw.iter().enumerate() {
        let ok = !scope.is_empty()
            && scope.len() <= MAX_SCOPE_CHARS
            && scope.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            violations.add(
                format!("{field}[{index}]"),
                format!("1..{MAX_SCOPE_CHARS} printable ASCII characters without spaces"),
            );
        } else if !out.contains(scope) {
            out.push(scope.clone());
        }
    }
    violations.finish()?;
    Ok(out)
}

/// A secret: 1..[`MAX_SECRET_BYTES`] bytes. The message never echoes it.
fn secret(field: &str, raw: &[u8]) -> ApiResult<()> {
    if raw.is_empty() {
        return Err(ApiError::invalid_argument(field, "required"));
    }
    if raw.len() > MAX_SECRET_BYTES {
        return Err(ApiError::invalid_argument(
            field,
            format!("at most {MAX_SECRET_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn provider(field: &str, raw: i32) -> ApiResult<Provider> {
    match parse::enum_value(field, raw)? {
        Provider::Unspecified => Err(ApiError::invalid_argument(field, "required")),
        provider => Ok(provider),
    }
}

/// The tenant a worker's request acts for. A token carrying a tenant acts
/// for that tenant only (another named tenant is NOT_FOUND, as if it did not
/// exist: B's worker never reaches A's connections); a token of
/// [`INTEGRATIONS_ROLE`] without a tenant (a platform-wide worker) names it
/// in `tenant_id`. Admins and platform admins as for any request.
fn worker_scope(ctx: &TenantContext, named: Option<TenantId>) -> ApiResult<TenantContext> {
    match (ctx.tenant(), named) {
        (Some(own), Some(named)) if own != named && !ctx.is_platform_admin() => {
            Err(RESOURCE.not_found())
        }
        (_, Some(named)) => {
            ctx.scoped_for_service(named, INTEGRATIONS_ROLE, || RESOURCE.not_found())
        }
        (Some(_), None) => Ok(ctx.clone()),
        (None, None) => Err(ApiError::invalid_argument(
            "tenant_id",
            "required: the token carries no tenant",
        )),
    }
}

/// The vault's parts the handlers need: the master key and the reveal limit.
#[derive(Debug, Clone)]
pub struct Vault {
    pub keys: Arc<dyn MasterKey>,
    pub(crate) reveals: RateLimiter,
}

impl Vault {
    /// The vault from settings: the master keyring ([`vault::Keyring`]) and
    /// the reveal limit on the process's Redis.
    pub fn from_env(env: &Env, redis: Redis) -> Result<Self, ConfigError> {
        let keys = vault::Keyring::from_env(env)?.shared();
        let limit = RateLimitConfig {
            per_second: env.parse(REVEAL_PER_SECOND, 50)?,
            burst: env.parse(REVEAL_BURST, 100)?,
        };
        Ok(Self {
            keys,
            reveals: RateLimiter::named(limit, redis, "vault-reveal"),
        })
    }
}

#[derive(Debug)]
pub struct Connections {
    db: Database,
    vault: Vault,
}

impl Connections {
    pub fn new(db: Database, vault: Vault) -> Self {
        Self { db, vault }
    }
}

/// The secret of `row`, decrypted; DATA_LOSS when its ciphertext does not
/// authenticate under its tenant, connection and version (moved from another
/// row or tenant, or damaged), logged for operators.
pub(crate) fn open_secret(
    keys: &dyn MasterKey,
    tenant: TenantId,
    row: &storage::SealedRow,
) -> ApiResult<Zeroizing<Vec<u8>>> {
    let key = vault::storage::unwrap_row(keys, tenant, &row.key)?;
    let id = row.connection.connection_id;
    let version = row.connection.secret_version;
    key.open(
        &row.secret_ciphertext,
        &secret_aad(tenant, id.uuid(), version),
    )
    .map_err(|e| {
        tracing::error!(
            %tenant,
            connection_id = %id,
            secret_version = version,
            key_version = row.key.key_version,
            error = %e,
            "vault: a secret does not decrypt under its tenant, connection and version \
             (the ciphertext was moved from another row or damaged)"
        );
        ApiError::data_loss(
            SECRET_UNREADABLE,
            "the connection's secret is unreadable; replace it",
        )
    })
}

#[tonic::async_trait]
impl ConnectionService for Connections {
    async fn create_connection(
        &self,
        req: Request<CreateConnectionRequest>,
    ) -> Result<Response<Connection>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let request = req.into_inner();
        let connection = request.connection.clone().unwrap_or_default();
        let (provider, fields, (), request_id) = (
            provider("connection.provider", connection.provider),
            ConnectionPatch::parse(&connection, |_| true, true).and_then(ConnectionPatch::into_new),
            secret("secret", &request.secret),
            parse::request_id("request_id", &request.request_id),
        )
            .all_ok()?;
        let keys = self.vault.keys.clone();
        let connection = create_once(
            &self.db,
            &ctx,
            "CreateConnection",
            request_id,
            &request,
            async |tx| {
                let tenant = tx.tenant_id();
                let key = vault::storage::current_key(tx, keys.as_ref()).await?;
                let id = ConnectionId::new();
                let ciphertext = key
                    .key
                    .seal(&request.secret, &secret_aad(tenant, id.uuid(), 1))
                    .map_err(ApiError::internal)?;
                let sealed = storage::SealedSecret {
                    ciphertext,
                    key_version: key.version,
                };
                let row = storage::insert(tx, id, provider, &fields, &sealed).await?;
                tx.audit(
                    "connection.create",
                    "connection",
                    id,
                    serde_json::json!({
                        "provider": provider.stored_name(),
                        "secret_version": 1,
                    }),
                )
                .await?;
                Ok(row.into_proto())
            },
        )
        .await?;
        Ok(Response::new(connection))
    }

    async fn get_connection(
        &self,
        req: Request<GetConnectionRequest>,
    ) -> Result<Response<Connection>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let id = parse::id("connection_id", &req.get_ref().connection_id)?;
        let row: storage::ConnectionRow = RESOURCE.read(&self.db, &ctx, id).await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn list_connections(
        &self,
        req: Request<ListConnectionsRequest>,
    ) -> Result<Response<ListConnectionsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let request = req.get_ref();
        let (size, provider, status) = (
            parse::page_size("page_size", request.page_size),
            parse::enum_or("provider", request.provider, Provider::Unspecified),
            parse::enum_or("status", request.status, ConnectionStatus::Unspecified),
        )
            .all_ok()?;
        let binding = PageBinding::new("ListConnections")
            .with(ctx.tenant_id()?)
            .with(request.show_deleted)
            .with(provider.stored_name())
            .with(status.stored_name());
        let after = page::decode::<ConnectionId>(&binding, &request.page_token)?;
        let filter = storage::ConnectionFilter {
            show_deleted: request.show_deleted,
            provider: (provider != Provider::Unspecified).then_some(provider),
            status: (status != ConnectionStatus::Unspecified).then_some(status),
        };
        let rows = self
            .db
            .read(&ctx, storage::list_page(&filter, after, size))
            .await?;
        let (connections, next_page_token) = page::page(
            rows,
            size,
            &binding,
            |connection| connection.connection_id,
            storage::ConnectionRow::into_proto,
        );
        Ok(Response::new(ListConnectionsResponse {
            connections,
            next_page_token,
        }))
    }

    async fn update_connection(
        &self,
        req: Request<UpdateConnectionRequest>,
    ) -> Result<Response<Connection>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let request = req.into_inner();
        let connection = request.connection.unwrap_or_default();
        let mask = UpdateMask::parse(request.update_mask.as_ref(), ConnectionPatch::PATHS)?;
        let (id, expected, patch) = (
            parse::id("connection.connection_id", &connection.connection_id),
            etag::parse("connection.etag", &connection.etag),
            ConnectionPatch::parse(&connection, |path| mask.contains(path), false),
        )
            .all_ok()?;
        let row = RESOURCE
            .update(
                &self.db,
                &ctx,
                id,
                expected,
                mask.audit_details(),
                async |tx, current: storage::ConnectionRow| {
                    let fields = patch.apply(current.fields());
                    storage::update(tx, id, &fields).await
                },
            )
            .await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn delete_connection(
        &self,
        req: Request<DeleteConnectionRequest>,
    ) -> Result<Response<Connection>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let request = req.get_ref();
        let (id, expected) = (
            parse::id("connection_id", &request.connection_id),
            etag::parse("etag", &request.etag),
        )
            .all_ok()?;
        let row: storage::ConnectionRow = RESOURCE
            .delete_or_undelete(&self.db, &ctx, id, expected, true)
            .await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn undelete_connection(
        &self,
        req: Request<UndeleteConnectionRequest>,
    ) -> Result<Response<Connection>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let id = parse::id("connection_id", &req.get_ref().connection_id)?;
        let row: storage::ConnectionRow = RESOURCE
            .delete_or_undelete(&self.db, &ctx, id, None, false)
            .await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn replace_secret(
        &self,
        req: Request<ReplaceSecretRequest>,
    ) -> Result<Response<Connection>, Status> {
        let ctx = TenantContext::of(&req)?;
        if !ctx.has_service_role(INTEGRATIONS_ROLE) {
            ctx.require(Role::Admin)?;
        }
        let request = req.into_inner();
        let (tenant, id, (), expected) = (
            parse::optional_id::<TenantId>("tenant_id", &request.tenant_id),
            parse::id::<ConnectionId>("connection_id", &request.connection_id),
            secret("secret", &request.secret),
            etag::parse("etag", &request.etag).and_then(|etag| {
                etag.ok_or_else(|| {
                    ApiError::invalid_argument(
                        "etag",
                        "required: the etag read with the secret it replaces",
                    )
                })
            }),
        )
            .all_ok()?;
        let ctx = worker_scope(&ctx, tenant)?;
        let keys = self.vault.keys.clone();
        let row = RESOURCE
            .change(
                &self.db,
                &ctx,
                id,
                Some(expected),
                "connection.replace_secret",
                serde_json::json!({}),
                async |tx, current: storage::ConnectionRow| {
                    let tenant = tx.tenant_id();
                    let version = current.secret_version + 1;
                    let key = vault::storage::current_key(tx, keys.as_ref()).await?;
                    let ciphertext = key
                        .key
                        .seal(&request.secret, &secret_aad(tenant, id.uuid(), version))
                        .map_err(ApiError::internal)?;
                    let sealed = storage::SealedSecret {
                        ciphertext,
                        key_version: key.version,
                    };
                    let row = storage::replace_secret(tx, id, version, &sealed).await?;
                    Ok(Changed::Written(row))
                },
            )
            .await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn reveal_secret(
        &self,
        req: Request<RevealSecretRequest>,
    ) -> Result<Response<RevealSecretResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require_service_role(INTEGRATIONS_ROLE)?;
        let request = req.get_ref();
        let (tenant, id, reason) = (
            parse::optional_id::<TenantId>("tenant_id", &request.tenant_id),
            parse::id::<ConnectionId>("connection_id", &request.connection_id),
            parse::name("reason", &request.reason, MAX_REASON),
        )
            .all_ok()?;
        let ctx = worker_scope(&ctx, tenant)?;
        let tenant = ctx.tenant_id()?;
        if let Decision::Limited { retry_after } = self.vault.reveals.check(tenant).await {
            return Err(ApiError::resource_exhausted(REVEAL_RATE_LIMITED, retry_after).into());
        }
        let mut tx = self.db.begin(&ctx).await?;
        let row = storage::sealed(&mut tx, id, false)
            .await?
            .ok_or_else(|| RESOURCE.not_found())?;
        if row.connection.meta.is_deleted() {
            return Err(RESOURCE.kind.is_deleted().into());
        }
        let secret = open_secret(self.vault.keys.as_ref(), tenant, &row)?;
        tx.audit(
            "connection.reveal",
            "connection",
            id,
            serde_json::json!({
                "reason": reason,
                "secret_version": row.connection.secret_version,
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(Response::new(RevealSecretResponse {
            connection: Some(row.connection.into_proto()),
            secret: secret.to_vec(),
        }))
    }
}

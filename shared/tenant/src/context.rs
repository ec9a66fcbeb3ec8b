//! [`TenantContext`]: the verified caller of one request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mosaic_api::{ApiError, ApiResult};
use mosaic_core::TenantId;
use uuid::Uuid;

/// Roles inside a tenant, strongest first. A role satisfies every weaker one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Viewer = 1,
    Member = 2,
    Admin = 3,
    Owner = 4,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "owner" => Role::Owner,
            "admin" => Role::Admin,
            "member" => Role::Member,
            "viewer" => Role::Viewer,
            _ => return None,
        })
    }
}

/// The token role that lets a principal manage every tenant.
pub const PLATFORM_ADMIN: &str = "platform_admin";

/// The prefix of service roles: `svc:<capability>` names one internal
/// service's right to call one named method (the edge's `svc:agent_lookup`,
/// the payment integration's `svc:payments`). A service role grants nothing
/// else, and a token that carries one may carry no tenant.
pub const SERVICE_ROLE_PREFIX: &str = "svc:";

/// Who calls, for which tenant, in which request, until when. Cheap to clone.
///
/// Made only by [`crate::AuthLayer`] from a verified token (and by
/// [`TenantContext::scoped_to`] for platform admins), so holding one means the
/// caller was authenticated.
#[derive(Debug, Clone)]
pub struct TenantContext(Arc<Inner>);

#[derive(Clone)]
struct Inner {
    tenant: Option<TenantId>,
    principal: String,
    role: Option<Role>,
    platform_admin: bool,
    /// The `svc:` roles of the token, e.g. `svc:payments`.
    service_roles: Vec<String>,
    request_id: String,
    traceparent: String,
    token: String,
    deadline: Option<Instant>,
    /// When the token runs out (`exp`, Unix seconds), for calls that outlive
    /// their start (a tail).
    token_exp: Option<u64>,
}

/// Everything but the token, which is a credential and never printed.
impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantContext")
            .field("tenant", &self.tenant)
            .field("principal", &self.principal)
            .field("role", &self.role)
            .field("platform_admin", &self.platform_admin)
            .field("service_roles", &self.service_roles)
            .field("request_id", &self.request_id)
            .field("traceparent", &self.traceparent)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl TenantContext {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        tenant: Option<TenantId>,
        principal: String,
        role: Option<Role>,
        platform_admin: bool,
        service_roles: Vec<String>,
        request_id: String,
        traceparent: String,
        token: String,
        deadline: Option<Instant>,
    ) -> Self {
        Self(Arc::new(Inner {
            tenant,
            principal,
            role,
            platform_admin,
            service_roles,
            request_id,
            traceparent,
            token,
            deadline,
            token_exp: None,
        }))
    }

    /// The same context, knowing when its token runs out.
    pub(crate) fn with_token_exp(mut self, exp: u64) -> Self {
        Arc::make_mut(&mut self.0).token_exp = Some(exp);
        self
    }

    /// How long the caller's token stays valid, when the call came with one:
    /// a stream that outlives it must end (UNAUTHENTICATED `TOKEN_EXPIRED`).
    pub fn token_valid_for(&self) -> Option<Duration> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.0
            .token_exp
            .map(|exp| Duration::from_secs(exp.saturating_sub(now)))
    }

    /// The context put on a request by the auth layer. A request that reached a
    /// handler without one is a wiring bug, reported as UNAUTHENTICATED.
    pub fn of<T>(req: &tonic::Request<T>) -> ApiResult<TenantContext> {
        req.extensions()
            .get::<TenantContext>()
            .cloned()
            .ok_or_else(|| ApiError::unauthenticated("UNAUTHENTICATED", "missing credentials"))
    }

    /// The tenant this call acts for. A token without a tenant (a platform
    /// admin's) cannot call tenant-scoped methods directly.
    pub fn tenant_id(&self) -> ApiResult<TenantId> {
        self.0.tenant.ok_or_else(|| {
            ApiError::permission_denied("the token carries no tenant; this method needs one")
        })
    }

    /// The tenant, if the token carries one.
    pub fn tenant(&self) -> Option<TenantId> {
        self.0.tenant
    }

    /// Token subject: `user:<id>`, `key:<id>` or `platform:<name>`.
    pub fn principal(&self) -> &str {
        &self.0.principal
    }

    /// The user id when the principal is a user.
    pub fn user_id(&self) -> Option<Uuid> {
        self.0
            .principal
            .strip_prefix("user:")
            .and_then(|s| Uuid::parse_str(s).ok())
    }

    pub fn role(&self) -> Option<Role> {
        self.0.role
    }

    pub fn is_platform_admin(&self) -> bool {
        self.0.platform_admin
    }

    pub fn request_id(&self) -> &str {
        &self.0.request_id
    }

    pub fn traceparent(&self) -> &str {
        &self.0.traceparent
    }

    pub(crate) fn token(&self) -> &str {
        &self.0.token
    }

    /// When the caller stops waiting, if it said.
    pub fn deadline(&self) -> Option<Instant> {
        self.0.deadline
    }

    /// Time left before the deadline (`None`: no deadline).
    pub fn remaining(&self) -> Option<Duration> {
        self.0
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// PERMISSION_DENIED unless the caller holds at least `min` in its tenant
    /// (platform admins hold every role).
    pub fn require(&self, min: Role) -> ApiResult<()> {
        if self.0.platform_admin {
            return Ok(());
        }
        self.tenant_id()?;
        match self.0.role {
            Some(r) if r >= min => Ok(()),
            _ => Err(ApiError::permission_denied(format!(
                "this method needs the {} role or stronger",
                min.as_str()
            ))),
        }
    }

    /// Whether the token carries the service role `role` (`svc:payments`).
    pub fn has_service_role(&self, role: &str) -> bool {
        self.0.service_roles.iter().any(|held| held == role)
    }

    /// PERMISSION_DENIED unless the token carries the service role `role`.
    pub fn require_service_role(&self, role: &str) -> ApiResult<()> {
        if self.has_service_role(role) {
            Ok(())
        } else {
            Err(ApiError::permission_denied(format!(
                "this method is for the service role {role}"
            )))
        }
    }

    /// PERMISSION_DENIED unless the caller is a platform admin.
    pub fn require_platform_admin(&self) -> ApiResult<()> {
        if self.0.platform_admin {
            Ok(())
        } else {
            Err(ApiError::permission_denied(
                "this method is for platform admins",
            ))
        }
    }

    /// The context for acting on `tenant`: the caller's own tenant, or, for a
    /// platform admin, any tenant. Anyone else asking for another tenant gets
    /// NOT_FOUND, exactly as if it did not exist.
    pub fn scoped_to(
        &self,
        tenant: TenantId,
        not_found: impl FnOnce() -> ApiError,
    ) -> ApiResult<Self> {
        if self.0.tenant == Some(tenant) {
            return Ok(self.clone());
        }
        if !self.0.platform_admin {
            return Err(not_found());
        }
        let mut scoped = self.clone();
        Arc::make_mut(&mut scoped.0).tenant = Some(tenant);
        Ok(scoped)
    }

    /// The context for acting on `tenant` as the holder of the service role
    /// `role` (`svc:payments` crediting a tenant): the caller's own tenant
    /// or, when the token carries `role`, the named one, with no tenant role
    /// of its own. Anyone else asking for another tenant gets `not_found`.
    pub fn scoped_for_service(
        &self,
        tenant: TenantId,
        role: &str,
        not_found: impl FnOnce() -> ApiError,
    ) -> ApiResult<Self> {
        if self.0.tenant == Some(tenant) || self.0.platform_admin {
            return self.scoped_to(tenant, not_found);
        }
        if !self.has_service_role(role) {
            return Err(not_found());
        }
        let mut scoped = self.clone();
        let i = Arc::make_mut(&mut scoped.0);
        (i.tenant, i.role, i.platform_admin) = (Some(tenant), None, false);
        Ok(scoped)
    }

    /// The context a request that may name a tenant (`tenant_id`, empty
    /// or a UUID) acts in: the token's tenant when it is empty or names it;
    /// any named tenant for a platform admin; `not_found` for anyone else
    /// naming another tenant (its existence is not revealed).
    pub fn for_request(
        &self,
        field: &str,
        tenant_id: &str,
        not_found: impl FnOnce() -> ApiError,
    ) -> ApiResult<Self> {
        match mosaic_api::parse::optional_id::<TenantId>(field, tenant_id)? {
            None if self.0.tenant.is_some() => Ok(self.clone()),
            None => Err(ApiError::invalid_argument(
                field,
                "required: the token carries no tenant",
            )),
            Some(tenant) => self.scoped_to(tenant, not_found),
        }
    }

    /// Like [`TenantContext::for_request`], also for a token holding the
    /// service role `role`, which may name any tenant
    /// ([`TenantContext::scoped_for_service`]).
    pub fn for_service_request(
        &self,
        field: &str,
        tenant_id: &str,
        role: &str,
        not_found: impl FnOnce() -> ApiError,
    ) -> ApiResult<Self> {
        match mosaic_api::parse::optional_id::<TenantId>(field, tenant_id)? {
            None => self.for_request(field, tenant_id, not_found),
            Some(tenant) => self.scoped_for_service(tenant, role, not_found),
        }
    }

    /// A context for work that no client request started (background jobs,
    /// bootstrap), acting as `principal` for `tenant`. Carries no token, so it
    /// cannot be propagated to other services.
    pub fn system(tenant: TenantId, principal: &str) -> Self {
        Self::new(
            Some(tenant),
            format!("system:{principal}"),
            Some(Role::Owner),
            false,
            Vec::new(),
            Uuid::now_v7().to_string(),
            crate::trace::new_traceparent(),
            String::new(),
            None,
        )
    }

    /// Like [`TenantContext::system`], as a platform admin of no tenant, for
    /// operator jobs that walk every tenant (the purge lists them).
    pub fn system_platform(principal: &str) -> Self {
        Self::new(
            None,
            format!("system:{principal}"),
            None,
            true,
            Vec::new(),
            Uuid::now_v7().to_string(),
            crate::trace::new_traceparent(),
            String::new(),
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(
        tenant: Option<TenantId>,
        role: Option<Role>,
        admin: bool,
        services: &[&str],
    ) -> TenantContext {
        TenantContext::new(
            tenant,
            "key:test".into(),
            role,
            admin,
            services.iter().map(|s| (*s).to_owned()).collect(),
            "req".into(),
            String::new(),
            String::new(),
            None,
        )
    }

    fn hidden() -> ApiError {
        ApiError::not_found("X_NOT_FOUND", "not found")
    }

    #[test]
    fn a_service_role_acts_for_a_named_tenant_and_nothing_else_does() {
        let (own, other) = (
            TenantId::from(Uuid::now_v7()),
            TenantId::from(Uuid::now_v7()),
        );
        let payments = ctx(None, None, false, &["svc:payments"]);
        let scoped = payments
            .scoped_for_service(other, "svc:payments", hidden)
            .unwrap();
        assert_eq!(scoped.tenant(), Some(other));
        assert!(!scoped.is_platform_admin() && scoped.role().is_none());
        assert!(scoped.has_service_role("svc:payments"));
        // Another service role, or a tenant's own owner naming another tenant: hidden.
        let lookup = ctx(None, None, false, &["svc:agent_lookup"]);
        let e = lookup
            .scoped_for_service(other, "svc:payments", hidden)
            .unwrap_err();
        assert_eq!(e.reason(), "X_NOT_FOUND");
        let owner = ctx(Some(own), Some(Role::Owner), false, &[]);
        assert!(
            owner
                .scoped_for_service(other, "svc:payments", hidden)
                .is_err()
        );
        assert_eq!(
            owner
                .scoped_for_service(own, "svc:payments", hidden)
                .unwrap()
                .tenant(),
            Some(own)
        );
        // A platform admin keeps its rights.
        let admin = ctx(None, None, true, &[]);
        assert!(
            admin
                .scoped_for_service(other, "svc:payments", hidden)
                .unwrap()
                .is_platform_admin()
        );
    }
}

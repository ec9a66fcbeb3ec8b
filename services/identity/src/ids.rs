//! The ids of identity's resources (tenants use `mosaic_core::TenantId`).

mosaic_core::define_id! {
    /// A user: global, one per email, seen by a tenant only through a membership.
    pub struct UserId;
}

mosaic_core::define_id! {
    /// A member: one user's membership of one tenant. What the tenant knows
    /// the user by (the `user_id` of `Member` and `user:<id>` principals).
    pub struct MemberId;
}

mosaic_core::define_id! {
    /// An API key.
    pub struct ApiKeyId;
}

mosaic_core::define_id! {
    /// A connection: one integration credential of a tenant (the vault).
    pub struct ConnectionId;
}

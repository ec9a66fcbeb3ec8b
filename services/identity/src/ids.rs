//! The ids of identity's resources (tenants use `mosaic_core::TenantId`).

mosaic_core::define_id! {
    /// A user: global, one per email, seen by a tenant only through a membership.
    pub struct UserId;
}

mosaic_core::define_id! {
    /// An API key.
    pub struct ApiKeyId;
}

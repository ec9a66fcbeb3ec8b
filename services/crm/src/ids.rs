//! The ids of crm's resources: one newtype each, so a deal id cannot be
//! passed where a contact id is expected (see `mosaic_core::ids`).

mosaic_core::define_id! {
    /// A company.
    pub struct CompanyId;
}

mosaic_core::define_id! {
    /// A contact.
    pub struct ContactId;
}

mosaic_core::define_id! {
    /// A deal.
    pub struct DealId;
}

mosaic_core::define_id! {
    /// An activity.
    pub struct ActivityId;
}

mosaic_core::define_id! {
    /// A signal.
    pub struct SignalId;
}

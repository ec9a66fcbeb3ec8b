//! The ids of billing's resources (see `mosaic_core::ids`).

mosaic_core::define_id! {
    /// A ledger entry.
    pub struct EntryId;
}

mosaic_core::define_id! {
    /// A hold (two-phase reservation).
    pub struct HoldId;
}

//! PostgreSQL for Mosaic services, fenced by tenant.
//!
//! Service code reaches the database only through [`Database::begin`], which
//! takes a [`TenantContext`] and opens a transaction whose first statement
//! sets `mosaic.tenant_id` for that transaction only (`SET LOCAL`, sent in the
//! same round trip as `BEGIN`). Row-level security does the rest. There is no
//! public way to get a bare pool connection; the named exceptions are the
//! migrator ([`migrate`], [`bootstrap`]), [`Database::begin_platform`] and
//! [`Database::call_without_tenant`] (no tenant at all, so RLS shows nothing
//! but what a reviewed SECURITY DEFINER function returns).
//!
//! - [`access`]: [`access::AccessView`], tenant states and revocations
//!   published by identity, checked on every call.
//! - [`config`]: pool settings from the environment.
//! - [`pool`]: [`Database`] and [`TenantTx`]; one-message reads (the read
//!   lane) and writes ([`Database::write`]: `SET LOCAL` and one statement
//!   in one round trip, committed with the message).
//! - [`error`]: SQLSTATE → [`mosaic_api::ApiError`].
//! - [`audit`]: audit events, written in the caller's transaction, and listed.
//! - [`idempotency`]: `request_id` replay, in the same transaction as the effect.
//! - [`purge`]: removes soft-deleted rows past their retention, per tenant.
//! - [`resource`]: the standard methods of a soft-deletable table (create
//!   once, read, update, delete and undelete with audit), written once.
//! - [`migrate`]: ordered, checksummed, lock-protected per-schema migrations.
//! - [`bootstrap`]: the owner role, one runtime role per service, schemas, grants.

pub mod access;
pub mod audit;
pub mod bootstrap;
pub mod config;
pub mod error;
pub mod idempotency;
pub mod migrate;
pub mod pool;
pub mod purge;
mod read_lane;
pub mod resource;
pub mod select;
mod time;
mod write;

pub use config::DbConfig;
pub use error::{Constraint, db_error, db_error_with};
pub use migrate::{Migrations, ServiceSchema};
pub use mosaic_tenant::TenantContext;
pub use pool::{Database, PlatformTx, TenantTx};
pub use resource::{Changed, HasMeta, Resource, RowMeta, create_once};
pub use select::{Order, Param, Select};
pub use time::{OptTime, Time};

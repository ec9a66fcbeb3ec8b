//! MongoDB for Mosaic services. MongoDB has no row-level security, so this
//! crate is the tenant fence: a service reaches its collections only through
//! [`Fenced`], whose every method takes the tenant and
//!
//! - adds `tenant_id` to every filter, as the first key;
//! - stamps it on every document inserted, and refuses an update that would
//!   change or remove it;
//! - puts a `$match` on it first in every aggregation, and on
//!   `fullDocument.tenant_id` first in every change-stream pipeline, and
//!   refuses stages that read other collections (`$lookup`, `$unionWith`,
//!   `$graphLookup`) or write (`$out`, `$merge`);
//! - creates only indexes whose first key is `tenant_id` (so every query is
//!   served within one tenant, and every collection can be sharded on
//!   `{tenant_id, ...}`).
//!
//! The one exception, [`Fenced::scan_all_tenants`], is for background
//! sweepers that look for work across tenants; it tags its command with a
//! `mosaic:all-tenants:<why>` comment so the [`audit`] accepts it.
//!
//! A service crate depends on this crate and not on `mongodb`: this crate
//! exports documents ([`bson`]) but no `Client`, `Database` or `Collection`,
//! so code outside it cannot issue an unfenced command (a compile-time fact,
//! not a convention). [`audit`] checks every command the driver sends
//! anyway, logs a violation as an error, and lets tests assert there was none.
//!
//! - [`Mongo`]: the lazy connection (nothing connects until the first use, so
//!   a process starts while MongoDB is down), its health [`Probe`], index
//!   creation at first contact, and error mapping to gRPC.
//! - [`Fenced`]: one collection, fenced to a tenant per call.

pub mod audit;
mod connection;
mod fenced;

pub use connection::{
    DEFAULT_URL, IndexSpec, MONGO_UNAVAILABLE, Mongo, MongoConfig, TIMEOUT_MS, is_duplicate_key,
    mongo_error,
};
pub use fenced::{
    CURSOR_EXPIRED, Fenced, InsertError, ResumeToken, Tail, TailEvent, token_from_json,
    token_to_json,
};
pub use mongodb::bson;

/// The field every document and filter carries.
pub const TENANT_FIELD: &str = "tenant_id";

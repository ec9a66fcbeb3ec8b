//! API conventions every Mosaic service shares, so that each service only adds
//! its own handlers and storage.
//!
//! - [`error`]: [`ApiError`], the one way to build a `tonic::Status` with
//!   `google.rpc.ErrorInfo` (domain `mosaic`) and `google.rpc.BadRequest`,
//!   and to read one back from a peer's status.
//! - [`parse`]: every parser from raw request fields into checked values;
//!   bad input stops there with the field named.
//! - [`rules`]: the standard-method rules (not found, deleted, stale etag,
//!   masked patches, expiry) that every store applies the same way.
//! - [`page`]: opaque keyset page tokens bound to the query that made them.
//! - [`mask`]: `update_mask` checking; [`etag`]: revision etags.
//! - [`convert`]: storage values to wire types (timestamps, dates, `Struct`).

pub mod convert;
pub mod error;
pub mod etag;
pub mod mask;
pub mod page;
pub mod parse;
pub mod rules;

pub use error::{AllOk, ApiError, ApiResult, Violations};

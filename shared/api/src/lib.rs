//! API conventions every Mosaic service shares, so that each service only adds
//! its own handlers and storage.
//!
//! - [`error`]: [`ApiError`], the one way to build a `tonic::Status` with
//!   `google.rpc.ErrorInfo` (domain `mosaic`) and `google.rpc.BadRequest`.
//! - [`validate`]: parsers from raw request fields into checked values; bad
//!   input stops there with the field named.
//! - [`page`]: opaque keyset page tokens bound to the query that made them.
//! - [`mask`]: `update_mask` checking; [`etag`]: revision etags.
//! - [`convert`]: timestamps and `google.protobuf.Struct` <-> JSON.

pub mod convert;
pub mod error;
pub mod etag;
pub mod mask;
pub mod page;
pub mod validate;

pub use error::{AllOk, ApiError, ApiResult, Violations};

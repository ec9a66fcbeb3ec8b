//! The standard-method rules (AIP-131..135, 154, 164) every service keeps,
//! whatever its store: how a missing, deleted or concurrently changed
//! resource answers, which fields an update touches, when a soft-deleted
//! resource expires. `mosaic_db::resource` applies them to PostgreSQL rows;
//! a MongoDB repository applies the same ones to its documents.
//!
//! - [`Kind`]: a resource's name and reasons, and the checks an update or
//!   delete runs on the stored revision and delete time.
//! - [`masked`]: parse a field only when the update mask names it.
//! - [`patch!`](crate::patch): a resource's checked fields and the partial
//!   update of them, declared once.
//! - [`expire_time`] and [`RETENTION`]: the AIP-164 `expire_time` of a
//!   soft-deleted resource.

use chrono::{DateTime, Utc};

use crate::{ApiError, ApiResult, convert, etag};

/// How long a soft-deleted resource is kept before the purge removes it.
pub const RETENTION: chrono::Duration = chrono::Duration::days(30);

/// A resource kind and how its errors read.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// The noun in messages and the audit resource type: `company`.
    pub name: &'static str,
    /// Reason of NOT_FOUND: `COMPANY_NOT_FOUND`.
    pub not_found: &'static str,
    /// Reason of FAILED_PRECONDITION on a write to a deleted resource: `COMPANY_DELETED`.
    pub deleted: &'static str,
}

impl Kind {
    /// NOT_FOUND; also what another tenant's resource looks like.
    pub fn not_found(&self) -> ApiError {
        ApiError::not_found(self.not_found, format!("{} not found", self.name))
    }

    /// NOT_FOUND naming the request field that referred to the resource.
    pub fn not_found_at(&self, field: &str) -> ApiError {
        ApiError::not_found(self.not_found, format!("{field}: {} not found", self.name))
    }

    /// FAILED_PRECONDITION: the resource is soft-deleted.
    pub fn is_deleted(&self) -> ApiError {
        ApiError::failed_precondition(
            self.deleted,
            format!("the {} is deleted; undelete it first", self.name),
        )
    }

    /// ABORTED unless `expected` (a parsed etag) is absent or `revision`.
    pub fn check_etag(&self, revision: i64, expected: Option<i64>) -> ApiResult<()> {
        if expected.is_some_and(|e| e != revision) {
            return Err(etag::stale(self.name));
        }
        Ok(())
    }

    /// The checks before an update, on the locked current state: a changed
    /// revision is ABORTED, a deleted resource FAILED_PRECONDITION.
    pub fn check_writable(
        &self,
        revision: i64,
        deleted: bool,
        expected: Option<i64>,
    ) -> ApiResult<()> {
        self.check_etag(revision, expected)?;
        if deleted {
            return Err(self.is_deleted());
        }
        Ok(())
    }
}

/// Runs a field's parser only when the update mask names it.
pub fn masked<T>(wanted: bool, parse: impl FnOnce() -> ApiResult<T>) -> ApiResult<Option<T>> {
    if wanted { parse().map(Some) } else { Ok(None) }
}

/// `delete_time + RETENTION`, the `expire_time` of a soft-deleted resource.
pub fn expire_time(deleted_at: Option<DateTime<Utc>>) -> Option<prost_types::Timestamp> {
    deleted_at.map(|d| convert::timestamp(d + RETENTION))
}

/// Declares a resource's checked writable fields and its partial update:
///
/// ```
/// mosaic_api::patch! {
///     /// The writable fields of a widget, checked.
///     pub struct WidgetFields / WidgetPatch {
///         name: String,
///         size: Option<i32>,
///     }
/// }
/// let patch = WidgetPatch { name: Some("new".into()), size: None };
/// let merged = patch.apply(WidgetFields { name: "old".into(), size: Some(2) });
/// assert_eq!((merged.name.as_str(), merged.size), ("new", Some(2)));
/// assert_eq!(WidgetPatch::PATHS, ["name", "size"]);
/// ```
///
/// The patch holds `Some` for each field the update mask named (parsed with
/// [`masked`]); `apply` writes those over the current fields, `into_new`
/// takes a patch in which every field was named (a create). The field names
/// are the update mask paths ([`PATHS`](#)).
#[macro_export]
macro_rules! patch {
    (
        $(#[$meta:meta])*
        $vis:vis struct $fields:ident / $patch:ident {
            $($(#[$field_meta:meta])* $field:ident : $ty:ty),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        $vis struct $fields {
            $($(#[$field_meta])* $vis $field: $ty,)+
        }

        /// The fields an update mask names, parsed (`None`: not named).
        #[derive(Debug, Default)]
        $vis struct $patch {
            $($vis $field: ::std::option::Option<$ty>,)+
        }

        impl $patch {
            /// The update mask paths: every writable field.
            $vis const PATHS: &'static [&'static str] = &[$(stringify!($field)),+];

            /// `to` with every named field replaced.
            #[allow(dead_code)]
            $vis fn apply(self, mut to: $fields) -> $fields {
                $(if let ::std::option::Option::Some(value) = self.$field {
                    to.$field = value;
                })+
                to
            }

            /// The fields of a create, where every field was named.
            #[allow(dead_code)]
            $vis fn into_new(self) -> $crate::ApiResult<$fields> {
                ::std::result::Result::Ok($fields {
                    $($field: self.$field.ok_or_else(|| {
                        $crate::ApiError::internal(concat!(
                            "a parsed ", stringify!($fields), " lacks ", stringify!($field)
                        ))
                    })?,)+
                })
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIDGET: Kind = Kind {
        name: "widget",
        not_found: "WIDGET_NOT_FOUND",
        deleted: "WIDGET_DELETED",
    };

    #[test]
    fn writable_checks_the_etag_first_then_the_delete() {
        assert!(WIDGET.check_writable(3, false, None).is_ok());
        assert!(WIDGET.check_writable(3, false, Some(3)).is_ok());
        assert_eq!(
            WIDGET
                .check_writable(3, true, Some(2))
                .unwrap_err()
                .reason(),
            "ETAG_MISMATCH"
        );
        assert_eq!(
            WIDGET.check_writable(3, true, None).unwrap_err().reason(),
            "WIDGET_DELETED"
        );
        assert_eq!(WIDGET.not_found().reason(), "WIDGET_NOT_FOUND");
        assert!(
            WIDGET
                .not_found_at("deal.widget_id")
                .message()
                .starts_with("deal.widget_id")
        );
    }

    crate::patch! {
        struct Fields / Patch {
            a: String,
            b: Option<i32>,
        }
    }

    #[test]
    fn patches_apply_named_fields_only() {
        let current = Fields {
            a: "x".into(),
            b: Some(1),
        };
        let merged = Patch {
            a: None,
            b: Some(None),
        }
        .apply(current.clone());
        assert_eq!(
            merged,
            Fields {
                a: "x".into(),
                b: None
            }
        );
        assert!(Patch::default().into_new().is_err());
        assert_eq!(Patch::PATHS, ["a", "b"]);
        assert_eq!(masked(false, || Ok(1)).unwrap(), None);
        assert_eq!(masked(true, || Ok(1)).unwrap(), Some(1));
        assert!(expire_time(None).is_none());
    }
}

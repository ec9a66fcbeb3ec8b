//! Typed ids. Every id in Mosaic is a UUID made by the service (UUIDv7); a
//! newtype per kind keeps a tenant id from being passed where a deal id is
//! expected, which bare `Uuid`s side by side in a signature cannot.
//!
//! [`define_id!`] makes one: `Copy`, ordered, hashed, shown as the UUID,
//! (de)serialised as the UUID, and, with this crate's `sqlx` feature, bound
//! and read by sqlx as a PostgreSQL `uuid` (arrays too).

/// Defines an id newtype over `uuid::Uuid`:
///
/// ```
/// mosaic_core::define_id! {
///     /// A deal.
///     pub struct DealId;
/// }
/// let id = DealId::new();
/// assert_eq!(DealId::from(id.uuid()), id);
/// ```
#[macro_export]
macro_rules! define_id {
    ($(#[$meta:meta])* $vis:vis struct $name:ident;) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis struct $name($crate::__private::uuid::Uuid);

        impl $name {
            /// A fresh id: UUIDv7, so ids sort by creation time.
            pub fn new() -> Self {
                Self($crate::__private::uuid::Uuid::now_v7())
            }

            /// The nil UUID: never an id the service made (scopes, defaults).
            pub const fn nil() -> Self {
                Self($crate::__private::uuid::Uuid::nil())
            }

            /// The UUID inside.
            pub const fn uuid(self) -> $crate::__private::uuid::Uuid {
                self.0
            }
        }

        impl ::std::default::Default for $name {
            /// The nil UUID (never a real id): for proto defaults and tests.
            fn default() -> Self {
                Self::nil()
            }
        }

        impl ::std::convert::From<$crate::__private::uuid::Uuid> for $name {
            fn from(u: $crate::__private::uuid::Uuid) -> Self {
                Self(u)
            }
        }

        impl ::std::convert::From<$name> for $crate::__private::uuid::Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                ::std::fmt::Display::fmt(&self.0, f)
            }
        }

        impl ::std::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl $crate::__private::serde::Serialize for $name {
            fn serialize<S: $crate::__private::serde::Serializer>(
                &self,
                s: S,
            ) -> ::std::result::Result<S::Ok, S::Error> {
                $crate::__private::serde::Serialize::serialize(&self.0, s)
            }
        }

        impl<'de> $crate::__private::serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::__private::serde::Deserializer<'de>>(
                d: D,
            ) -> ::std::result::Result<Self, D::Error> {
                <$crate::__private::uuid::Uuid as $crate::__private::serde::Deserialize>::deserialize(d)
                    .map(Self)
            }
        }

        $crate::__sqlx_id!($name);
    };
}

#[cfg(feature = "sqlx")]
#[doc(hidden)]
#[macro_export]
macro_rules! __sqlx_id {
    ($name:ident) => {
        impl $crate::__private::sqlx::Type<$crate::__private::sqlx::Postgres> for $name {
            fn type_info() -> $crate::__private::sqlx::postgres::PgTypeInfo {
                <$crate::__private::uuid::Uuid as $crate::__private::sqlx::Type<
                    $crate::__private::sqlx::Postgres,
                >>::type_info()
            }

            fn compatible(ty: &$crate::__private::sqlx::postgres::PgTypeInfo) -> bool {
                <$crate::__private::uuid::Uuid as $crate::__private::sqlx::Type<
                    $crate::__private::sqlx::Postgres,
                >>::compatible(ty)
            }
        }

        impl $crate::__private::sqlx::postgres::PgHasArrayType for $name {
            fn array_type_info() -> $crate::__private::sqlx::postgres::PgTypeInfo {
                <$crate::__private::uuid::Uuid as $crate::__private::sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        impl<'q> $crate::__private::sqlx::Encode<'q, $crate::__private::sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut $crate::__private::sqlx::postgres::PgArgumentBuffer,
            ) -> ::std::result::Result<
                $crate::__private::sqlx::encode::IsNull,
                $crate::__private::sqlx::error::BoxDynError,
            > {
                <$crate::__private::uuid::Uuid as $crate::__private::sqlx::Encode<
                    'q,
                    $crate::__private::sqlx::Postgres,
                >>::encode_by_ref(&self.0, buf)
            }
        }

        impl<'r> $crate::__private::sqlx::Decode<'r, $crate::__private::sqlx::Postgres> for $name {
            fn decode(
                value: $crate::__private::sqlx::postgres::PgValueRef<'r>,
            ) -> ::std::result::Result<Self, $crate::__private::sqlx::error::BoxDynError> {
                <$crate::__private::uuid::Uuid as $crate::__private::sqlx::Decode<
                    'r,
                    $crate::__private::sqlx::Postgres,
                >>::decode(value)
                .map(Self)
            }
        }
    };
}

#[cfg(not(feature = "sqlx"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __sqlx_id {
    ($name:ident) => {};
}

define_id! {
    /// A tenant: the unit of isolation. Every row, document and cache key of
    /// a tenant carries it.
    pub struct TenantId;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_and_serialises_as_the_uuid() {
        let id = TenantId::new();
        assert_eq!(id.to_string(), id.uuid().to_string());
        assert_eq!(format!("{id:?}"), format!("TenantId({})", id.uuid()));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", id.uuid()));
        assert_eq!(serde_json::from_str::<TenantId>(&json).unwrap(), id);
        assert!(TenantId::new() > id, "v7 ids sort by creation");
        assert!(TenantId::default().uuid().is_nil());
    }
}

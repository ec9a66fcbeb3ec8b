//! [`Select`]: one SELECT and its typed parameters, read in one message by
//! [`Database::read`](crate::Database::read) (the read lane), for Get and
//! List methods alike.
//!
//! The lane sends reads in PostgreSQL's simple protocol, many per message, so
//! a parameter travels as a literal of its declared type in `EXECUTE
//! <prepared>(...)`. UUIDs, integers, booleans and times are printed in
//! their canonical forms (digits, hex, dashes, colons). Text and JSON are
//! quoted the way `quote_literal` does: between single quotes, each single
//! quote doubled, which is exact because every lane connection runs with
//! `standard_conforming_strings = on` (a backslash is an ordinary character)
//! and UTF-8 (no byte of a multi-byte character is a quote). The one value a
//! literal cannot hold, NUL, fails its read before it is queued; the
//! validators refuse control characters long before. (JSON writes NUL as
//! `\u0000`, ordinary text for the literal, which `jsonb` then refuses as
//! PostgreSQL always does; the request validators refuse it first.)

use std::borrow::Cow;
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use mosaic_core::TenantId;
use uuid::Uuid;

/// A parameter: its PostgreSQL type and value (`None` is NULL of that type).
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    ty: &'static str,
    value: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Uuid(Uuid),
    Text(String),
    Int(i64),
    Bool(bool),
    Time(DateTime<Utc>),
    Date(NaiveDate),
    /// Serialized JSON.
    Json(String),
}

impl Param {
    /// The PostgreSQL type the prepared SELECT declares for it.
    pub(crate) fn type_name(&self) -> &'static str {
        self.ty
    }

    /// A JSON value, for a `jsonb` parameter.
    pub fn json(value: &serde_json::Value) -> Self {
        Self {
            ty: "jsonb",
            value: Some(Value::Json(value.to_string())),
        }
    }

    /// Whether a literal can hold it: not text with NUL, which PostgreSQL
    /// text cannot hold either.
    pub(crate) fn check(&self) -> Result<(), sqlx::Error> {
        match &self.value {
            Some(Value::Text(s) | Value::Json(s)) if s.contains('\0') => {
                Err(sqlx::Error::Protocol(
                    "a text parameter holds NUL, which PostgreSQL text cannot".into(),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Appends the literal to `out` (of a [`Param::check`]ed value).
    pub(crate) fn write_literal(&self, out: &mut String) {
        match &self.value {
            None => out.push_str("NULL"),
            Some(Value::Uuid(id)) => {
                out.push('\'');
                push_uuid(*id, out);
                out.push('\'');
            }
            Some(Value::Int(n)) => {
                let _ = write!(out, "{n}");
            }
            Some(Value::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
            Some(Value::Time(t)) => {
                let _ = write!(out, "'{}'", t.to_rfc3339_opts(SecondsFormat::Micros, true));
            }
            Some(Value::Date(d)) => {
                let _ = write!(out, "'{}'", d.format("%Y-%m-%d"));
            }
            Some(Value::Text(s) | Value::Json(s)) => quote(s, out),
        }
    }
}

/// The hyphenated lowercase form of `id` (hex and dashes), without `fmt`.
pub(crate) fn push_uuid(id: Uuid, out: &mut String) {
    out.push_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
}

/// `s` between single quotes, each one inside doubled.
fn quote(s: &str, out: &mut String) {
    out.reserve(s.len() + 2);
    out.push('\'');
    for part in s.split_inclusive('\'') {
        out.push_str(part);
        if part.ends_with('\'') {
            out.push('\'');
        }
    }
    out.push('\'');
}

/// Rust values that are one parameter type.
pub trait ParamType {
    /// The PostgreSQL type name.
    const TYPE: &'static str;
}

macro_rules! param {
    ($rust:ty, $pg:literal, |$v:ident| $value:expr) => {
        impl ParamType for $rust {
            const TYPE: &'static str = $pg;
        }
        impl From<$rust> for Param {
            fn from($v: $rust) -> Self {
                Self {
                    ty: $pg,
                    value: Some($value),
                }
            }
        }
    };
}

param!(Uuid, "uuid", |v| Value::Uuid(v));
param!(TenantId, "uuid", |v| Value::Uuid(v.uuid()));
param!(String, "text", |v| Value::Text(v));
param!(&str, "text", |v| Value::Text(v.to_owned()));
param!(i64, "int8", |v| Value::Int(v));
param!(bool, "bool", |v| Value::Bool(v));
param!(DateTime<Utc>, "timestamptz", |v| Value::Time(v));
param!(NaiveDate, "date", |v| Value::Date(v));

impl<T: ParamType + Into<Param>> From<Option<T>> for Param {
    fn from(value: Option<T>) -> Self {
        value.map_or(
            Self {
                ty: T::TYPE,
                value: None,
            },
            Into::into,
        )
    }
}

/// The direction of a keyset page ([`Select::keyset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

/// One SELECT, built like sqlx's `QueryBuilder`: `$tenant` is the caller's
/// tenant, and [`Select::push_bind`] appends `$1`, `$2`, ... One statement,
/// without `;`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Select {
    sql: Cow<'static, str>,
    params: Vec<Param>,
}

impl Select {
    pub fn new(sql: impl Into<String>) -> Self {
        Self {
            sql: Cow::Owned(sql.into()),
            params: Vec::new(),
        }
    }

    /// A service's constant statement, whose parameters come from [`Select::bind`]:
    /// not copied, and [`crate::Database::write`] finds its prepared form by
    /// its address instead of hashing its text.
    pub fn constant(sql: &'static str) -> Self {
        Self {
            sql: Cow::Borrowed(sql),
            params: Vec::new(),
        }
    }

    /// The constant this statement was made from, if it was.
    pub(crate) fn as_constant(&self) -> Option<&'static str> {
        match self.sql {
            Cow::Borrowed(sql) => Some(sql),
            Cow::Owned(_) => None,
        }
    }

    /// Appends SQL text (never a value a client sent: bind those).
    pub fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.to_mut().push_str(sql);
        self
    }

    /// Appends the next parameter's placeholder and keeps its value.
    pub fn push_bind(&mut self, param: impl Into<Param>) -> &mut Self {
        self.params.push(param.into());
        let _ = write!(self.sql.to_mut(), "${}", self.params.len());
        self
    }

    /// Keeps the next parameter, for SQL that names `$1..$n` itself (a
    /// service's constant statement); the n-th `bind` is `$n`.
    pub fn bind(&mut self, param: impl Into<Param>) -> &mut Self {
        self.params.push(param.into());
        self
    }

    /// The end of a keyset page query over one key column (`t.company_id`):
    /// past `after`, the last key of the previous page (`>` ascending, `<`
    /// descending), in key order, `size + 1` rows (the extra row tells
    /// `mosaic_api::page::page` that there is a next page).
    pub fn keyset(
        &mut self,
        column: &str,
        order: Order,
        after: Option<Uuid>,
        size: u32,
    ) -> &mut Self {
        let (beyond, direction) = match order {
            Order::Asc => (" > ", ""),
            Order::Desc => (" < ", " DESC"),
        };
        if let Some(after) = after {
            self.push(" AND ")
                .push(column)
                .push(beyond)
                .push_bind(after);
        }
        self.push(" ORDER BY ")
            .push(column)
            .push(direction)
            .push(" LIMIT ")
            .push_bind(i64::from(size) + 1)
    }

    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The parameters, for SQL that names `$1..$n` itself.
    pub(crate) fn params_mut(&mut self) -> &mut Vec<Param> {
        &mut self.params
    }

    pub(crate) fn into_parts(self) -> (String, Vec<Param>) {
        (self.sql.into_owned(), self.params)
    }

    pub(crate) fn params(&self) -> &[Param] {
        &self.params
    }
}

/// `$tenant` → `$1` and `$n` → `$n+1`: the parameters of the prepared statement.
pub(crate) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix("tenant") {
            out.push_str("$1");
            rest = tail;
            continue;
        }
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<usize>() {
            Ok(n) => {
                let _ = write!(out, "${}", n.saturating_add(1));
                rest = &after[digits..];
            }
            Err(_) => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The parameter types of a prepared statement over `params`, the tenant
/// (`uuid`) first: `uuid,text,int8`.
pub(crate) fn types(params: &[Param]) -> String {
    let mut types = String::with_capacity(5 + 8 * params.len());
    types.push_str("uuid");
    for param in params {
        types.push(',');
        types.push_str(param.type_name());
    }
    types
}

/// sqlx arguments for a statement [`numbered`]: the tenant, then `params`,
/// each with its declared type (the extended protocol's binary format).
pub(crate) fn arguments(
    tenant: Uuid,
    params: &[Param],
) -> Result<sqlx::postgres::PgArguments, sqlx::Error> {
    use sqlx::Arguments as _;
    let mut args = sqlx::postgres::PgArguments::default();
    let encode = sqlx::Error::Encode;
    args.add(tenant).map_err(encode)?;
    for param in params {
        match (&param.value, param.ty) {
            (Some(Value::Uuid(v)), _) => args.add(*v),
            (Some(Value::Text(v)), _) => args.add(v.as_str()),
            (Some(Value::Int(v)), _) => args.add(*v),
            (Some(Value::Bool(v)), _) => args.add(*v),
            (Some(Value::Time(v)), _) => args.add(*v),
            (Some(Value::Date(v)), _) => args.add(*v),
            (Some(Value::Json(v)), _) => match serde_json::from_str::<serde_json::Value>(v) {
                Ok(v) => args.add(sqlx::types::Json(v)),
                Err(e) => Err(e.into()),
            },
            (None, "uuid") => args.add(None::<Uuid>),
            (None, "text") => args.add(None::<String>),
            (None, "int8") => args.add(None::<i64>),
            (None, "bool") => args.add(None::<bool>),
            (None, "timestamptz") => args.add(None::<DateTime<Utc>>),
            (None, "date") => args.add(None::<NaiveDate>),
            (None, "jsonb") => args.add(None::<sqlx::types::Json<serde_json::Value>>),
            (None, other) => Err(format!("no NULL of parameter type {other}").into()),
        }
        .map_err(encode)?;
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_the_tenant_first_then_the_ids() {
        assert_eq!(
            numbered("WHERE a = $tenant AND b = $1 AND c = $9 AND d = $10 AND e = '$x'"),
            "WHERE a = $1 AND b = $2 AND c = $10 AND d = $11 AND e = '$x'"
        );
    }

    fn literal(p: impl Into<Param>) -> String {
        let p = p.into();
        p.check().expect("a literal can hold it");
        let mut out = String::new();
        p.write_literal(&mut out);
        out
    }

    #[test]
    fn literals_are_exact() {
        assert_eq!(literal("plain"), "'plain'");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("''"), "''''''");
        assert_eq!(literal(r"back\slash"), r"'back\slash'");
        assert_eq!(literal("'; DROP TABLE x; --"), "'''; DROP TABLE x; --'");
        assert_eq!(literal("é'ü"), "'é''ü'");
        assert_eq!(literal(42_i64), "42");
        assert_eq!(literal(-1_i64), "-1");
        assert_eq!(literal(true), "true");
        assert_eq!(literal(None::<Uuid>), "NULL");
        assert_eq!(
            literal(Uuid::nil()),
            "'00000000-0000-0000-0000-000000000000'"
        );
        let t = DateTime::parse_from_rfc3339("2026-12-01T10:00:00.123456Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(literal(t), "'2026-12-01T10:00:00.123456Z'");
        let d = NaiveDate::from_ymd_opt(2026, 2, 3).expect("date");
        assert_eq!(literal(d), "'2026-02-03'");
        assert_eq!(
            literal(Param::json(&serde_json::json!({"a": "b'c"}))),
            r#"'{"a":"b''c"}'"#
        );
    }

    #[test]
    fn nul_fails_the_read() {
        assert!(Param::from("a\0b").check().is_err());
        assert!(
            Param::json(&serde_json::json!({"a": "\u{0}"}))
                .check()
                .is_ok()
        );
    }

    #[test]
    fn binds_are_numbered_in_order() {
        let mut select = Select::new("SELECT x FROM t WHERE t.tenant_id = $tenant");
        select
            .push(" AND a = ")
            .push_bind("v")
            .push(" AND b > ")
            .push_bind(None::<Uuid>)
            .push(" LIMIT ")
            .push_bind(51_i64);
        let (sql, params) = select.into_parts();
        assert_eq!(
            sql,
            "SELECT x FROM t WHERE t.tenant_id = $tenant AND a = $1 AND b > $2 LIMIT $3"
        );
        let types: Vec<_> = params.iter().map(Param::type_name).collect();
        assert_eq!(types, ["text", "uuid", "int8"]);
    }

    #[test]
    fn keysets_go_past_the_last_key_in_key_order() {
        let mut first = Select::new("SELECT x FROM t WHERE t.tenant_id = $tenant");
        first.keyset("t.id", Order::Asc, None, 50);
        assert_eq!(
            first.into_parts(),
            (
                "SELECT x FROM t WHERE t.tenant_id = $tenant ORDER BY t.id LIMIT $1".to_owned(),
                vec![Param::from(51_i64)]
            )
        );
        let mut next = Select::new("SELECT x FROM t WHERE t.tenant_id = $tenant");
        next.keyset("t.id", Order::Desc, Some(Uuid::nil()), 10);
        let (sql, params) = next.into_parts();
        assert_eq!(
            sql,
            "SELECT x FROM t WHERE t.tenant_id = $tenant AND t.id < $1 ORDER BY t.id DESC LIMIT $2"
        );
        assert_eq!(params, [Param::from(Uuid::nil()), Param::from(11_i64)]);
    }
}

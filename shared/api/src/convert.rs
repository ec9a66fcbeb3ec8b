//! Conversions between wire types and storage types.

use chrono::{DateTime, TimeZone, Utc};
use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};
use serde_json::{Map, Number, Value as Json};

use crate::{ApiError, ApiResult};

pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn opt_timestamp(t: Option<DateTime<Utc>>) -> Option<Timestamp> {
    t.map(timestamp)
}

/// Timestamp seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the
/// range of `google.protobuf.Timestamp` (and well inside PostgreSQL's).
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

/// A request timestamp, checked to be a real instant in years 1..=9999.
pub fn datetime(field: &str, t: &Timestamp) -> ApiResult<DateTime<Utc>> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(ApiError::invalid_argument(field, "nanos out of range"));
    }
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&t.seconds) {
        return Err(ApiError::invalid_argument(
            field,
            "must be between years 1 and 9999",
        ));
    }
    Utc.timestamp_opt(t.seconds, t.nanos as u32)
        .single()
        .ok_or_else(|| ApiError::invalid_argument(field, "not a valid time"))
}

/// A `google.protobuf.Struct` from a request, as a JSON object of at most
/// `max_bytes` encoded. `None` becomes `{}`.
pub fn json_object(field: &str, s: Option<&Struct>, max_bytes: usize) -> ApiResult<Json> {
    let Some(s) = s else {
        return Ok(Json::Object(Map::new()));
    };
    let json = struct_to_json(field, s, 0)?;
    let size = serde_json::to_vec(&json)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > max_bytes {
        return Err(ApiError::invalid_argument(
            field,
            format!("at most {max_bytes} bytes of JSON"),
        ));
    }
    Ok(json)
}

const MAX_DEPTH: usize = 32;

fn struct_to_json(field: &str, s: &Struct, depth: usize) -> ApiResult<Json> {
    let mut map = Map::with_capacity(s.fields.len());
    for (k, v) in &s.fields {
        no_nul(field, k)?;
        map.insert(k.clone(), value_to_json(field, v, depth + 1)?);
    }
    Ok(Json::Object(map))
}

fn value_to_json(field: &str, v: &Value, depth: usize) -> ApiResult<Json> {
    if depth > MAX_DEPTH {
        return Err(ApiError::invalid_argument(
            field,
            format!("nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    Ok(match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::StringValue(s)) => {
            no_nul(field, s)?;
            Json::String(s.clone())
        }
        Some(Kind::NumberValue(n)) => Json::Number(
            Number::from_f64(*n)
                .ok_or_else(|| ApiError::invalid_argument(field, "numbers must be finite"))?,
        ),
        Some(Kind::StructValue(s)) => struct_to_json(field, s, depth)?,
        Some(Kind::ListValue(l)) => Json::Array(
            l.values
                .iter()
                .map(|v| value_to_json(field, v, depth + 1))
                .collect::<ApiResult<_>>()?,
        ),
    })
}

/// PostgreSQL's `jsonb` cannot hold U+0000 in keys or strings.
fn no_nul(field: &str, s: &str) -> ApiResult<()> {
    if s.contains('\0') {
        return Err(ApiError::invalid_argument(
            field,
            "JSON strings must not contain U+0000",
        ));
    }
    Ok(())
}

/// A stored JSON object as a `google.protobuf.Struct` (non-objects become empty).
pub fn json_to_struct(j: &Json) -> Struct {
    match j {
        Json::Object(map) => Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        },
        _ => Struct::default(),
    }
}

pub fn json_to_value(j: &Json) -> Value {
    let kind = match j {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        Json::Object(_) => Kind::StructValue(json_to_struct(j)),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_roundtrip_and_limits() {
        let j = serde_json::json!({"a": 1.5, "b": [true, null, "x"], "c": {"d": "e"}});
        let s = json_to_struct(&j);
        assert_eq!(json_object("settings", Some(&s), 1024).unwrap(), j);
        assert!(json_object("settings", Some(&s), 10).is_err());
        let nan = Struct {
            fields: [(
                "n".to_owned(),
                Value {
                    kind: Some(Kind::NumberValue(f64::NAN)),
                },
            )]
            .into(),
        };
        assert!(json_object("settings", Some(&nan), 1024).is_err());
        let nul = Struct {
            fields: [(
                "k".to_owned(),
                Value {
                    kind: Some(Kind::StringValue("a\0b".into())),
                },
            )]
            .into(),
        };
        assert!(json_object("settings", Some(&nul), 1024).is_err());
        let too_late = Timestamp {
            seconds: MAX_SECONDS + 1,
            nanos: 0,
        };
        assert!(datetime("t", &too_late).is_err());
        assert!(
            datetime(
                "t",
                &Timestamp {
                    seconds: MAX_SECONDS,
                    nanos: 0
                }
            )
            .is_ok()
        );
    }
}

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

/// A request timestamp, checked to be a real instant.
pub fn datetime(field: &str, t: &Timestamp) -> ApiResult<DateTime<Utc>> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(ApiError::invalid_argument(field, "nanos out of range"));
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
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
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
    }
}

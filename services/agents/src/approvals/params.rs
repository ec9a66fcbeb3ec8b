//! The parameters of an action: a bounded JSON object of the shape its kind
//! names (checked on create and on an approver's edit alike), and the diff
//! an approver's edit is recorded as.

use mosaic_api::{ApiError, ApiResult, Violations, parse};
use mosaic_proto::StoredEnum;
use mosaic_proto::agents::ActionKind;
use mosaic_proto::crm::DealStage;
use serde_json::{Map, Value, json};

/// Largest parameters object, encoded.
pub(crate) const MAX_PARAMETERS_BYTES: usize = 16 * 1024;
const MAX_RECIPIENTS: usize = 50;
const MAX_SUBJECT: usize = 998;
const MAX_BODY: usize = 10_000;
const MAX_TITLE: usize = 200;
const MAX_NOTES: usize = 4000;
const MAX_CHANNEL: usize = 200;
const MAX_TEXT: usize = 4000;

/// Parses `raw` as the parameters of `kind`, naming `field` (and its keys)
/// at fault. Unknown keys of a kind with a shape are refused.
pub(crate) fn parse(
    field: &str,
    kind: ActionKind,
    raw: Option<&prost_types::Struct>,
) -> ApiResult<Value> {
    if raw.is_none() && kind != ActionKind::Custom {
        return Err(ApiError::invalid_argument(field, "required"));
    }
    let value = parse::json_object(field, raw, MAX_PARAMETERS_BYTES)?;
    let Value::Object(object) = &value else {
        return Err(ApiError::invalid_argument(field, "must be an object"));
    };
    let shape: &[(&str, Check)] = match kind {
        ActionKind::Unspecified | ActionKind::Custom => return Ok(value),
        ActionKind::SendEmail => &[
            ("to", Check::Emails { required: true }),
            ("cc", Check::Emails { required: false }),
            ("subject", Check::Text(MAX_SUBJECT, true)),
            ("body", Check::Text(MAX_BODY, true)),
        ],
        ActionKind::UpdateDealStage => &[("deal_id", Check::Uuid), ("stage", Check::Stage)],
        ActionKind::CreateTask => &[
            ("title", Check::Text(MAX_TITLE, true)),
            ("due_date", Check::Date),
            ("notes", Check::Text(MAX_NOTES, false)),
        ],
        ActionKind::PostMessage => &[
            ("channel", Check::Text(MAX_CHANNEL, true)),
            ("text", Check::Text(MAX_TEXT, true)),
        ],
    };
    let mut violations = Violations::new();
    for key in object.keys() {
        if !shape.iter().any(|(known, _)| known == key) {
            let known: Vec<&str> = shape.iter().map(|(name, _)| *name).collect();
            violations.add(
                format!("{field}.{key}"),
                format!(
                    "unknown key; {} takes {}",
                    kind.stored_name(),
                    known.join(", ")
                ),
            );
        }
    }
    for (key, check) in shape {
        check.run(&format!("{field}.{key}"), object.get(*key), &mut violations);
    }
    violations.finish()?;
    Ok(value)
}

/// What one key must hold.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// A list of 1..MAX_RECIPIENTS email addresses (0.. when not required).
    Emails { required: bool },
    /// A string of 1..max characters; required or optional.
    Text(usize, bool),
    /// A UUID string (required).
    Uuid,
    /// A deal stage name (required).
    Stage,
    /// An optional `YYYY-MM-DD` date.
    Date,
}

impl Check {
    fn run(self, field: &str, value: Option<&Value>, violations: &mut Violations) {
        let required = match self {
            Self::Emails { required } | Self::Text(_, required) => required,
            Self::Uuid | Self::Stage => true,
            Self::Date => false,
        };
        let Some(value) = value else {
            if required {
                violations.add(field, "required");
            }
            return;
        };
        match (self, value) {
            (Self::Emails { required }, Value::Array(items)) => {
                if (required && items.is_empty()) || items.len() > MAX_RECIPIENTS {
                    let least = if required { 1 } else { 0 };
                    violations.add(field, format!("{least}..{MAX_RECIPIENTS} email addresses"));
                }
                for (index, item) in items.iter().enumerate() {
                    let at = format!("{field}[{index}]");
                    match item {
                        Value::String(address) => {
                            violations.take(parse::email(&at, address));
                        }
                        _ => violations.add(at, "must be an email address"),
                    }
                }
            }
            (Self::Emails { .. }, _) => violations.add(field, "must be a list of email addresses"),
            (Self::Text(max, _), Value::String(text)) => {
                violations.take(parse::name(field, text, max));
            }
            (Self::Text(max, _), _) => {
                violations.add(field, format!("must be a string of 1..{max} characters"));
            }
            (Self::Uuid, Value::String(id)) => {
                violations.take(parse::id::<uuid::Uuid>(field, id));
            }
            (Self::Uuid, _) => violations.add(field, "must be a UUID string"),
            (Self::Stage, Value::String(stage)) if DealStage::from_stored(stage).is_some() => {}
            (Self::Stage, _) => violations.add(
                field,
                "must be one of lead, qualified, proposal, negotiation, closed_won, closed_lost",
            ),
            (Self::Date, Value::String(date)) => {
                violations.take(parse::date(field, date));
            }
            (Self::Date, _) => violations.add(field, "must be a date such as 2026-12-31"),
        }
    }
}

/// The approver's edit of `before` into `after`, key by key:
/// `{"changed": {key: {"from", "to"}}, "added": {key: value}, "removed":
/// [key]}`; `None` when they are equal.
pub(crate) fn diff(before: &Value, after: &Value) -> Option<Value> {
    let empty = Map::new();
    let before = before.as_object().unwrap_or(&empty);
    let after = after.as_object().unwrap_or(&empty);
    let mut changed = Map::new();
    let mut added = Map::new();
    let mut removed = Vec::new();
    for (key, old) in before {
        match after.get(key) {
            None => removed.push(Value::String(key.clone())),
            Some(new) if new != old => {
                changed.insert(key.clone(), json!({ "from": old, "to": new }));
            }
            Some(_) => {}
        }
    }
    for (key, new) in after {
        if !before.contains_key(key) {
            added.insert(key.clone(), new.clone());
        }
    }
    if changed.is_empty() && added.is_empty() && removed.is_empty() {
        return None;
    }
    Some(json!({ "changed": changed, "added": added, "removed": removed }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: Value) -> prost_types::Struct {
        mosaic_api::convert::json_to_struct(value)
    }

    fn fields(e: &ApiError) -> Vec<String> {
        e.violations().iter().map(|v| v.field.clone()).collect()
    }

    #[test]
    fn each_kind_checks_its_shape_and_names_the_key() {
        let ok = parse(
            "p",
            ActionKind::SendEmail,
            Some(&object(
                json!({"to": ["a@example.com"], "subject": "Hi", "body": "Hello"}),
            )),
        );
        assert!(ok.is_ok(), "{ok:?}");
        let bad = parse(
            "p",
            ActionKind::SendEmail,
            Some(&object(json!({"to": ["nope"], "subject": "", "extra": 1}))),
        )
        .unwrap_err();
        assert_eq!(fields(&bad), ["p.extra", "p.to[0]", "p.subject", "p.body"]);
        let stage = parse(
            "p",
            ActionKind::UpdateDealStage,
            Some(&object(json!({"deal_id": "x", "stage": "won"}))),
        )
        .unwrap_err();
        assert_eq!(fields(&stage), ["p.deal_id", "p.stage"]);
        let task = parse(
            "p",
            ActionKind::CreateTask,
            Some(&object(json!({"title": "Call", "due_date": "2026-02-30"}))),
        )
        .unwrap_err();
        assert_eq!(fields(&task), ["p.due_date"]);
        assert!(parse("p", ActionKind::PostMessage, None).is_err());
        assert!(
            parse(
                "p",
                ActionKind::Custom,
                Some(&object(json!({"any": [1, 2]})))
            )
            .is_ok()
        );
        let big = "x".repeat(MAX_PARAMETERS_BYTES);
        let too_big = parse(
            "p",
            ActionKind::Custom,
            Some(&object(json!({ "blob": big }))),
        )
        .unwrap_err();
        assert_eq!(fields(&too_big), ["p"]);
    }

    #[test]
    fn the_diff_names_what_the_approver_changed() {
        let before = json!({"subject": "Hi", "body": "b", "cc": ["x@example.com"]});
        let after = json!({"subject": "Hello", "body": "b", "to": ["y@example.com"]});
        assert_eq!(
            diff(&before, &after).unwrap(),
            json!({
                "changed": {"subject": {"from": "Hi", "to": "Hello"}},
                "added": {"to": ["y@example.com"]},
                "removed": ["cc"],
            })
        );
        assert_eq!(diff(&before, &before), None);
    }
}

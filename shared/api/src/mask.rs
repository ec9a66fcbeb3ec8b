//! `update_mask` (AIP-134): which fields an Update writes.

use prost_types::FieldMask;

use crate::{ApiError, ApiResult};

/// The checked set of paths of an update mask. An absent or empty mask, or
/// `*`, means every updatable field.
#[derive(Debug, Clone)]
pub struct UpdateMask(Vec<String>);

impl UpdateMask {
    pub fn parse(mask: Option<&FieldMask>, allowed: &[&str]) -> ApiResult<Self> {
        let paths = mask.map(|m| m.paths.as_slice()).unwrap_or_default();
        if paths.is_empty() || paths == ["*"] {
            return Ok(Self(allowed.iter().map(|s| (*s).to_owned()).collect()));
        }
        for path in paths {
            if !allowed.contains(&path.as_str()) {
                return Err(ApiError::invalid_argument(
                    "update_mask",
                    format!(
                        "unknown or immutable path {path:?}; allowed: {}",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        // In the order of `allowed`, each once.
        Ok(Self(
            allowed
                .iter()
                .filter(|name| paths.iter().any(|path| path == *name))
                .map(|name| (*name).to_owned())
                .collect(),
        ))
    }

    pub fn contains(&self, path: &str) -> bool {
        self.0.iter().any(|p| p == path)
    }

    /// The paths, in the order the resource declares its fields.
    pub fn paths(&self) -> &[String] {
        &self.0
    }

    /// What an update's audit event records: `{"fields": [the paths]}`.
    pub fn audit_details(&self) -> serde_json::Value {
        serde_json::json!({ "fields": self.0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_means_all_and_unknown_is_refused() {
        let all = UpdateMask::parse(None, &["a", "b"]).unwrap();
        assert!(all.contains("a") && all.contains("b"));
        let m = FieldMask {
            paths: vec!["b".into()],
        };
        let one = UpdateMask::parse(Some(&m), &["a", "b"]).unwrap();
        assert!(!one.contains("a") && one.contains("b"));
        let twice = FieldMask {
            paths: vec!["b".into(), "a".into(), "b".into()],
        };
        let ordered = UpdateMask::parse(Some(&twice), &["a", "b"]).unwrap();
        assert_eq!(ordered.paths(), ["a", "b"]);
        assert_eq!(
            ordered.audit_details(),
            serde_json::json!({"fields": ["a", "b"]})
        );
        let bad = FieldMask {
            paths: vec!["tenant_id".into()],
        };
        assert!(UpdateMask::parse(Some(&bad), &["a"]).is_err());
    }
}

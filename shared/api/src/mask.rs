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
        for p in paths {
            if !allowed.contains(&p.as_str()) {
                return Err(ApiError::invalid_argument(
                    "update_mask",
                    format!(
                        "unknown or immutable path {p:?}; allowed: {}",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(Self(paths.to_vec()))
    }

    pub fn contains(&self, path: &str) -> bool {
        self.0.iter().any(|p| p == path)
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
        let bad = FieldMask {
            paths: vec!["tenant_id".into()],
        };
        assert!(UpdateMask::parse(Some(&bad), &["a"]).is_err());
    }
}

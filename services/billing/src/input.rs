//! Billing's request values, checked: amounts, idempotency keys, references,
//! and the tenant a request acts for. Each parser names its field, so bad
//! input stops here as INVALID_ARGUMENT with the field at fault.

use mosaic_api::{ApiError, ApiResult, parse};
use mosaic_tenant::TenantContext;

use crate::accounts::ACCOUNT;

/// The largest amount of one call: 10^12 credits. An account's balance stays
/// at most 10^18 (`accounts_balance_max`), far from the i64 limit.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;
/// Longest idempotency key.
pub const MAX_KEY_CHARS: usize = 128;
/// Longest reference.
pub const MAX_REFERENCE_CHARS: usize = 200;

/// An amount of credits in `1..=MAX_AMOUNT`.
pub fn amount(field: &str, raw: i64) -> ApiResult<i64> {
    if raw <= 0 {
        return Err(ApiError::invalid_argument(field, "must be positive"));
    }
    if raw > MAX_AMOUNT {
        return Err(ApiError::invalid_argument(
            field,
            format!("at most {MAX_AMOUNT}"),
        ));
    }
    Ok(raw)
}

/// A signed correction: not 0, at most [`MAX_AMOUNT`] either way.
pub fn signed_amount(field: &str, raw: i64) -> ApiResult<i64> {
    if raw == 0 {
        return Err(ApiError::invalid_argument(field, "must not be 0"));
    }
    amount(field, raw.checked_abs().unwrap_or(i64::MAX)).map(|_| raw)
}

/// An idempotency key: 1..=128 of `A-Z a-z 0-9 . _ : -` (a UUID, a message
/// id, `order-42:charge`).
pub fn key(field: &str, raw: &str) -> ApiResult<String> {
    if raw.is_empty() {
        return Err(ApiError::invalid_argument(field, "required"));
    }
    let ok = raw.len() <= MAX_KEY_CHARS
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::invalid_argument(
            field,
            format!("1..{MAX_KEY_CHARS} characters of A-Z, a-z, 0-9, '.', '_', ':', '-'"),
        ))
    }
}

/// A reference (an order id, a message id): at most 200 characters, trimmed.
pub fn reference(field: &str, raw: &str) -> ApiResult<String> {
    parse::optional_text(field, raw, MAX_REFERENCE_CHARS).map(Option::unwrap_or_default)
}

/// The context a request acts in: the token's tenant when `tenant_id` is
/// empty or names it; any named tenant for a platform admin; NOT_FOUND
/// `ACCOUNT_NOT_FOUND` for anyone else naming another tenant (its existence
/// is not revealed).
pub fn scope(ctx: &TenantContext, tenant_id: &str) -> ApiResult<TenantContext> {
    ctx.for_request("tenant_id", tenant_id, || ACCOUNT.not_found())
}

/// Like [`scope`], also for a token holding the service role `role`, which
/// may name any tenant.
pub fn scope_for_service(
    ctx: &TenantContext,
    tenant_id: &str,
    role: &str,
) -> ApiResult<TenantContext> {
    ctx.for_service_request("tenant_id", tenant_id, role, || ACCOUNT.not_found())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_positive_and_bounded() {
        assert_eq!(amount("amount", 1).unwrap(), 1);
        assert_eq!(amount("amount", MAX_AMOUNT).unwrap(), MAX_AMOUNT);
        for bad in [0, -1, i64::MIN, MAX_AMOUNT + 1, i64::MAX] {
            let e = amount("amount", bad).unwrap_err();
            assert_eq!(e.violations()[0].field, "amount", "{bad}");
        }
    }

    #[test]
    fn corrections_are_signed_and_bounded() {
        assert_eq!(signed_amount("amount", -5).unwrap(), -5);
        assert_eq!(signed_amount("amount", MAX_AMOUNT).unwrap(), MAX_AMOUNT);
        for bad in [0, i64::MIN, -MAX_AMOUNT - 1, MAX_AMOUNT + 1] {
            assert!(signed_amount("amount", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_have_one_shape() {
        for good in [
            "a",
            "order-42:charge",
            "0190c0de-0000-7000-8000-000000000000",
            &"k".repeat(128),
        ] {
            assert!(key("idempotency_key", good).is_ok(), "{good}");
        }
        for bad in ["", " ", "a b", "é", "a\n", &"k".repeat(129), "a/b"] {
            assert!(key("idempotency_key", bad).is_err(), "{bad:?}");
        }
    }
}

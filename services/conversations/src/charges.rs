//! Exactly-once charging of AI usage: a small saga across MongoDB and billing.
//!
//! 1. AppendMessage stores the message with its charge PENDING (and a
//!    `due_at` a little in the future) in the same insert as the message.
//! 2. It then calls billing's `Consume` with the idempotency key
//!    `msg:<message id>`, the price of the usage as the amount, and settles
//!    the charge: CHARGED (with the ledger entry), INSUFFICIENT_CREDITS or
//!    FAILED, each final. Billing down, slow or refusing for a passing
//!    reason leaves it PENDING; the append succeeds either way.
//! 3. The [`sweeper`] finds PENDING charges that are due (across tenants,
//!    through the `pending_charges` partial index) and does step 2 again,
//!    with a backoff, until they settle.
//!
//! No double charge: billing applies a key once (a retry, a sweep racing the
//! append, a process killed after calling billing and before settling: the
//! next call with the key returns the first entry). No lost charge: the
//! charge is stored with the message, so whatever dies after the insert, a
//! sweeper (of this or another replica, or the next start) finishes it.
//! Only a still-PENDING charge is settled, so settlements cannot overwrite
//! each other.
//!
//! Billing is called with a short-lived token this service signs for
//! itself (`service:conversations`, role `svc:charging`, no tenant: billing
//! lets that role consume for the tenant it names), carrying the caller's
//! request id and trace when there is a caller.
//!
//! Prices: `MOSAIC_CONVERSATIONS_PRICES`, `model=input:output,...` in credits
//! per 1,000 tokens, with `default` for models not listed (default
//! `default=1:2`). A message costs `ceil((input * in + output * out) / 1000)`
//! credits; usage that costs nothing is not charged.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mosaic_api::ApiResult;
use mosaic_core::{ConfigError, Context as _, Env, Metrics, StartupError, TenantId};
use mosaic_proto::billing::ConsumeRequest;
use mosaic_proto::billing::credit_service_client::CreditServiceClient;
use mosaic_proto::conversations::ChargeState;
use mosaic_server::Shutdown;
use mosaic_tenant::{AuthConfig, PeerChannel, ServiceToken, TenantContext, TokenSigner};
use tonic::Code;

use crate::store::{ChargeRecord, MessageRecord, Store, UsageRecord, now};

/// `MOSAIC_CONVERSATIONS_PRICES`: credits per 1,000 tokens by model.
pub const PRICES: &str = "MOSAIC_CONVERSATIONS_PRICES";
const DEFAULT_PRICES: &str = "default=1:2";
/// `MOSAIC_CONVERSATIONS_CHARGE_TIMEOUT_MS`: how long an append waits for
/// billing before it leaves the charge to the sweeper (default 1000).
pub const CHARGE_TIMEOUT_MS: &str = "MOSAIC_CONVERSATIONS_CHARGE_TIMEOUT_MS";
/// `MOSAIC_CONVERSATIONS_CHARGE_SWEEP_MS`: how often the sweeper looks for
/// due charges (default 1000).
pub const CHARGE_SWEEP_MS: &str = "MOSAIC_CONVERSATIONS_CHARGE_SWEEP_MS";
/// `MOSAIC_CONVERSATIONS_CHARGE_GRACE_MS`: how long after an append its
/// charge first becomes due for the sweeper (default 5000): the append's own
/// attempt goes first.
pub const CHARGE_GRACE_MS: &str = "MOSAIC_CONVERSATIONS_CHARGE_GRACE_MS";
/// The service role billing lets consume for any tenant.
pub const CHARGING_ROLE: &str = "svc:charging";
/// The principal of this service's own tokens.
const PRINCIPAL: &str = "service:conversations";
/// Charges settled per sweep round.
const SWEEP_BATCH: i64 = 100;

/// How often the sweeper counts the pending charges for its gauges, and how
/// many it counts at most (the gauge then reads this many).
const PENDING_SAMPLE_EVERY: Duration = Duration::from_secs(15);
const PENDING_SAMPLE_LIMIT: i64 = 1000;
/// The longest wait between two attempts at one charge.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Credits per 1,000 tokens, `(input, output)`, by model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prices {
    by_model: HashMap<String, (i64, i64)>,
    default: (i64, i64),
}

impl Prices {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let raw = env.string(PRICES, DEFAULT_PRICES)?;
        Self::parse(&raw).map_err(|why| ConfigError::invalid(PRICES, &raw, why))
    }

    fn parse(raw: &str) -> Result<Self, String> {
        let mut by_model = HashMap::new();
        let mut default = None;
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (model, price) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?} is not model=input:output"))?;
            let (input, output) = price
                .split_once(':')
                .ok_or_else(|| format!("{entry:?} is not model=input:output"))?;
            let credits = |s: &str| {
                s.trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (0..=1_000_000).contains(n))
                    .ok_or_else(|| format!("{entry:?}: prices are whole credits 0..1000000"))
            };
            let price = (credits(input)?, credits(output)?);
            match model.trim() {
                "default" => default = Some(price),
                model => {
                    by_model.insert(model.to_owned(), price);
                }
            }
        }
        Ok(Self {
            by_model,
            default: default.ok_or("a default=input:output price is required")?,
        })
    }

    /// What `usage` costs, in credits.
    pub fn credits(&self, usage: &UsageRecord) -> i64 {
        let (input, output) = self
            .by_model
            .get(&usage.model)
            .copied()
            .unwrap_or(self.default);
        // Tokens are at most 10^7 each and prices 10^6: no overflow.
        let milli = usage.input_tokens * input + usage.output_tokens * output;
        (milli + 999) / 1000
    }
}

/// What billing said about one charge.
#[derive(Debug)]
enum Outcome {
    Settled(ChargeRecord),
    /// Try again later.
    Retry,
}

/// Calls billing for pending charges and settles them.
#[derive(Debug)]
pub struct Charger {
    billing: PeerChannel,
    token: ServiceToken,
    store: Store,
    timeout: Duration,
    pub(crate) grace: Duration,
}

impl Charger {
    pub fn new(
        billing: PeerChannel,
        signer: TokenSigner,
        auth: AuthConfig,
        store: Store,
        env: &Env,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            billing,
            token: ServiceToken::new(signer, auth, PRINCIPAL, CHARGING_ROLE),
            store,
            timeout: env.millis(CHARGE_TIMEOUT_MS, 1000)?,
            grace: env.millis(CHARGE_GRACE_MS, 5000)?,
        })
    }

    /// One attempt at a pending charge, within `timeout`.
    async fn attempt(&self, ctx: &TenantContext, tenant: TenantId, m: &MessageRecord) -> Outcome {
        let Some(charge) = m
            .charge
            .as_ref()
            .filter(|c| c.state == ChargeState::Pending)
        else {
            return Outcome::Retry;
        };
        let token = match self.token.get() {
            Ok(token) => token,
            Err(e) => {
                tracing::error!(error = %e.message(), "cannot sign the billing token");
                return Outcome::Retry;
            }
        };
        let mut billing =
            CreditServiceClient::with_interceptor(self.billing.clone(), ctx.propagate_as(token));
        let mut request = tonic::Request::new(ConsumeRequest {
            tenant_id: tenant.to_string(),
            amount: charge.credits,
            idempotency_key: format!("msg:{}", m.id),
            reference: format!("message:{}", m.id),
        });
        // Propagate keeps this when it is tighter than the caller's deadline.
        request.set_timeout(self.timeout);
        let attempts = charge.attempts.saturating_add(1);
        let settled = |state, ledger_entry_id, reason: Option<String>| {
            Outcome::Settled(ChargeRecord {
                state,
                credits: charge.credits,
                ledger_entry_id,
                reason,
                attempts,
                due_at: None,
            })
        };
        let call = tokio::time::timeout(self.timeout, billing.consume(request)).await;
        match call {
            Ok(Ok(entry)) => settled(
                ChargeState::Charged,
                Some(entry.into_inner().entry_id),
                None,
            ),
            Ok(Err(status)) => {
                let reason = mosaic_api::ApiError::from_status(&status)
                    .reason()
                    .to_owned();
                match (status.code(), reason.as_str()) {
                    (Code::FailedPrecondition, "INSUFFICIENT_CREDITS")
                    | (Code::NotFound, "ACCOUNT_NOT_FOUND") => {
                        settled(ChargeState::InsufficientCredits, None, Some(reason))
                    }
                    (Code::InvalidArgument | Code::FailedPrecondition | Code::NotFound, _) => {
                        tracing::warn!(message_id = %m.id, code = ?status.code(), %reason, "billing refused a charge");
                        settled(ChargeState::Failed, None, Some(reason))
                    }
                    (code, _) => {
                        if matches!(code, Code::PermissionDenied | Code::Unauthenticated) {
                            tracing::error!(code = ?code, "billing does not accept this service's charging token");
                        }
                        Outcome::Retry
                    }
                }
            }
            Err(_) => Outcome::Retry,
        }
    }

    /// Tries a message's pending charge once and stores what came of it;
    /// returns the message as it is afterwards.
    pub async fn charge(&self, ctx: &TenantContext, m: MessageRecord) -> ApiResult<MessageRecord> {
        let tenant = ctx.tenant_id()?;
        match self.attempt(ctx, tenant, &m).await {
            Outcome::Settled(settled) => Ok(self
                .store
                .settle_charge(ctx, m.id, &settled)
                .await?
                .unwrap_or(m)),
            Outcome::Retry => {
                let Some(charge) = m.charge.as_ref() else {
                    return Ok(m);
                };
                let attempts = charge.attempts.saturating_add(1);
                let backoff = backoff(attempts);
                let retry = ChargeRecord {
                    attempts,
                    due_at: Some(
                        now()
                            + backoff
                                .max(chrono::Duration::from_std(self.grace).unwrap_or_default()),
                    ),
                    ..charge.clone()
                };
                Ok(self
                    .store
                    .settle_charge(ctx, m.id, &retry)
                    .await?
                    .unwrap_or(m))
            }
        }
    }
}

/// 1 s, 2 s, 4 s, ... up to [`MAX_BACKOFF`].
fn backoff(attempts: i32) -> chrono::Duration {
    let secs = 1u64 << attempts.clamp(0, 16);
    chrono::Duration::from_std(Duration::from_secs(secs).min(MAX_BACKOFF))
        .unwrap_or(chrono::Duration::seconds(300))
}

/// The charge a new message with `usage` carries, or `None` when it costs nothing.
pub fn new_charge(
    prices: &Prices,
    usage: Option<&UsageRecord>,
    at: DateTime<Utc>,
    grace: Duration,
) -> Option<ChargeRecord> {
    let credits = prices.credits(usage?);
    (credits > 0).then(|| ChargeRecord {
        state: ChargeState::Pending,
        credits,
        ledger_entry_id: None,
        reason: None,
        attempts: 0,
        due_at: Some(at + chrono::Duration::from_std(grace).unwrap_or_default()),
    })
}

/// What the sweeper last saw of the pending charges, for the gauges
/// `mosaic_conversations_pending_charges` and
/// `mosaic_conversations_pending_charge_oldest_age_seconds` (the
/// `MosaicChargesPendingTooLong` alert).
#[derive(Debug, Default)]
pub struct PendingStats {
    count: AtomicU64,
    /// Unix milliseconds of the oldest pending charge's message; 0 for none.
    oldest_ms: AtomicI64,
}

impl PendingStats {
    pub fn register_metrics(self: &Arc<Self>, metrics: &Metrics) -> Result<(), StartupError> {
        let stats = self.clone();
        metrics.register_gauge_fn(
            "mosaic_conversations_pending_charges",
            "AI-usage charges waiting for billing, as the sweeper last counted them (at most 1000).",
            &[],
            Arc::new(move || stats.count.load(Ordering::Relaxed) as f64),
        )
        .context("registering mosaic_conversations_pending_charges")?;
        let stats = self.clone();
        metrics
            .register_gauge_fn(
                "mosaic_conversations_pending_charge_oldest_age_seconds",
                "Age of the oldest AI-usage charge still waiting for billing; 0 when none waits.",
                &[],
                Arc::new(move || stats.oldest_age(now()).as_secs_f64()),
            )
            .context("registering mosaic_conversations_pending_charge_oldest_age_seconds")
    }

    fn set(&self, count: usize, oldest: Option<DateTime<Utc>>) {
        self.count.store(count as u64, Ordering::Relaxed);
        let oldest_ms = oldest.map_or(0, |t| t.timestamp_millis().max(1));
        self.oldest_ms.store(oldest_ms, Ordering::Relaxed);
    }

    /// Grows between samples: a charge seen pending stays pending until the
    /// next sample says otherwise.
    fn oldest_age(&self, now: DateTime<Utc>) -> Duration {
        match self.oldest_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            ms => Duration::from_millis((now.timestamp_millis() - ms).max(0).unsigned_abs()),
        }
    }
}

/// Settles due pending charges every `interval` until `stop` fires, and
/// counts the pending ones into `stats` every [`PENDING_SAMPLE_EVERY`].
pub async fn sweeper(
    charger: std::sync::Arc<Charger>,
    stats: Arc<PendingStats>,
    interval: Duration,
    stop: Shutdown,
) {
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let mut sampled: Option<Instant> = None;
    loop {
        tokio::select! {
            () = &mut stopped => return,
            () = tokio::time::sleep(interval) => {}
        }
        if sampled.is_none_or(|at| at.elapsed() >= PENDING_SAMPLE_EVERY) {
            // An outage is logged by the store; the gauges keep the last sample.
            if let Ok((count, oldest)) = charger
                .store
                .pending_charges(PENDING_SAMPLE_LIMIT, interval.max(Duration::from_secs(5)))
                .await
            {
                stats.set(count, oldest);
                sampled = Some(Instant::now());
            }
        }
        let due = match charger
            .store
            .due_charges(now(), SWEEP_BATCH, interval.max(Duration::from_secs(5)))
            .await
        {
            Ok(due) => due,
            // An outage is logged (once per interval) by the store.
            Err(_) => continue,
        };
        for (tenant, message) in due {
            if stop.is_triggered() {
                return;
            }
            let ctx = TenantContext::system(tenant, "charge-sweeper");
            if let Err(e) = charger.charge(&ctx, message).await {
                tracing::debug!(error = %e.message(), "charge sweep deferred");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(model: &str, input: i64, output: i64) -> UsageRecord {
        UsageRecord {
            model: model.into(),
            input_tokens: input,
            output_tokens: output,
            response_time_ms: None,
        }
    }

    #[test]
    fn prices_round_up_per_thousand_tokens() {
        let prices = Prices::parse("default=1:2, gpt-4o=5:15").unwrap();
        assert_eq!(prices.credits(&usage("gpt-4o", 1000, 1000)), 20);
        assert_eq!(prices.credits(&usage("gpt-4o", 1, 0)), 1);
        assert_eq!(prices.credits(&usage("other", 1500, 500)), 3);
        assert_eq!(prices.credits(&usage("other", 0, 0)), 0);
        assert_eq!(
            prices.credits(&usage("other", 10_000_000, 10_000_000)),
            30_000
        );
    }

    #[test]
    fn bad_prices_are_refused() {
        for bad in [
            "gpt=1:2",
            "default=1",
            "default=-1:2",
            "default=a:b",
            "default=1:2000001",
        ] {
            assert!(Prices::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_oldest_pending_charge_ages_until_the_next_sample() {
        let stats = PendingStats::default();
        let t0 = now();
        assert_eq!(stats.oldest_age(t0), Duration::ZERO);
        stats.set(2, Some(t0));
        assert_eq!(
            stats.oldest_age(t0 + chrono::Duration::seconds(700)),
            Duration::from_secs(700)
        );
        stats.set(0, None);
        assert_eq!(
            stats.oldest_age(t0 + chrono::Duration::seconds(800)),
            Duration::ZERO
        );
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), chrono::Duration::seconds(2));
        assert_eq!(backoff(3), chrono::Duration::seconds(8));
        assert_eq!(backoff(30), chrono::Duration::seconds(300));
    }
}

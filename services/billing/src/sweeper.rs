//! The hold sweeper: a background task of every billing process that, every
//! `MOSAIC_BILLING_SWEEP_INTERVAL_MS` (default 1 s), finds pending holds past
//! their expire_time (a read across tenants through the platform role) and
//! releases each in its own tenant's transaction, as `system:hold-sweeper`,
//! with status `expired` and a `release` entry. Replicas may sweep at once:
//! the release's `status = 'pending'` condition lets one of them win, and
//! the others find the hold resolved and move on.

use std::time::Duration;

use mosaic_api::ApiResult;
use mosaic_core::LogEvery;
use mosaic_db::{Database, TenantContext};
use mosaic_server::Shutdown;

use crate::holds;

/// Most holds released per round; a full round is followed by another at once.
pub const BATCH: i64 = 500;

/// Sweeps until `stop` fires.
pub async fn run(db: Database, interval: Duration, stop: Shutdown) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let warnings = LogEvery::new(Duration::from_secs(60));
    loop {
        tokio::select! {
            () = &mut stopped => return,
            _ = ticks.tick() => {}
        }
        loop {
            match sweep_once(&db).await {
                Ok(released) if released < BATCH as usize => break,
                Ok(_) if stop.is_triggered() => return,
                Ok(_) => {}
                Err(e) => {
                    // Said at most once a minute (the database may be down).
                    warnings.log(|held| {
                        tracing::warn!(
                            error = %e,
                            failed_rounds_since = held,
                            "hold sweep failed; retrying next round"
                        );
                    });
                    break;
                }
            }
        }
    }
}

/// One round: releases up to [`BATCH`] expired holds; returns how many it found.
pub async fn sweep_once(db: &Database) -> ApiResult<usize> {
    let platform = TenantContext::system_platform("hold-sweeper");
    let mut tx = db.begin_platform(&platform).await?;
    let expired = holds::storage::expired(&mut tx, BATCH).await?;
    tx.commit().await?;
    for &(tenant, hold) in &expired {
        let ctx = TenantContext::system(tenant, "hold-sweeper");
        match holds::release(db, &ctx, hold, true).await {
            Ok(entry) => {
                tracing::info!(%tenant, %hold, seq = entry.seq, "expired hold released");
            }
            // Resolved meanwhile (captured in time, released, another replica).
            Err(e) if e.code() == tonic::Code::FailedPrecondition => {}
            Err(e) => return Err(e),
        }
    }
    Ok(expired.len())
}

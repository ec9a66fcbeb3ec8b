//! The subject relay: when a contact or deal leaves the database (the purge),
//! agents' approvals that name it must have the subject cleared
//! (`ApprovalService.ClearSubject`), not keep a reference to nothing.
//!
//! A trigger writes every deleted contact and deal to `deleted_subjects` in
//! the transaction that deletes it (`migrations/crm/0005_deleted_subjects.sql`),
//! so nothing that deletes can forget to. This background task of every crm
//! process then, every `MOSAIC_CRM_SUBJECT_RELAY_MS` (default 1 s), reads the
//! due rows across tenants (through the platform role), calls agents for each
//! as `service:crm` with the service role `svc:subjects` naming the tenant,
//! and removes the row once agents has answered OK. A failed call leaves the
//! row for later with a doubling backoff (up to five minutes), so agents
//! being down or a crash between the purge and the call loses nothing.
//! Replicas relaying at once are harmless: clearing a subject twice clears
//! nothing the second time.

use std::time::Duration;

use mosaic_api::ApiResult;
use mosaic_core::{Env, LogEvery, StartupError, TenantId};
use mosaic_db::{Database, TenantContext, db_error};
use mosaic_proto::agents::approval_service_client::ApprovalServiceClient;
use mosaic_proto::agents::{ClearSubjectRequest, SubjectType};
use mosaic_server::Shutdown;
use mosaic_tenant::PeerChannel;
use mosaic_tenant::{AuthConfig, ServiceToken, TokenSigner};
use tonic::Status;
use uuid::Uuid;

/// `MOSAIC_CRM_SUBJECT_RELAY_MS`: how often the relay looks for deleted
/// subjects to tell agents about (default 1000).
pub const RELAY_MS: &str = "MOSAIC_CRM_SUBJECT_RELAY_MS";
/// The service role agents lets clear subjects in the tenant a request names.
pub const SUBJECTS_ROLE: &str = "svc:subjects";
const PRINCIPAL: &str = "service:crm";
/// Rows delivered per round; a full round is followed by another at once.
const BATCH: i64 = 100;
/// How long one call to agents may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest wait between two deliveries of one row.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often a relay that keeps failing says so.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// One deleted subject agents has not been told about yet.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Pending {
    tenant_id: Uuid,
    subject_type: String,
    subject_id: Uuid,
    attempts: i32,
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    /// Rows found due.
    pub due: usize,
    /// Rows agents answered OK for, now removed.
    pub delivered: usize,
    /// Why the last failed delivery failed.
    pub last_error: Option<String>,
}

/// Tells agents about deleted subjects.
#[derive(Debug)]
pub struct Relay {
    db: Database,
    agents: PeerChannel,
    token: ServiceToken,
}

impl Relay {
    /// `db` must allow the platform read (`Database::with_platform_role`).
    pub fn new(db: Database, agents: PeerChannel, signer: TokenSigner, auth: AuthConfig) -> Self {
        Self {
            db,
            agents,
            token: ServiceToken::new(signer, auth, PRINCIPAL, SUBJECTS_ROLE),
        }
    }

    /// The relay's interval from `env`.
    pub fn interval(env: &Env) -> Result<Duration, StartupError> {
        Ok(env.millis(RELAY_MS, 1000)?)
    }

    /// Relays until `stop` fires.
    pub async fn run(self, interval: Duration, stop: Shutdown) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        let warnings = LogEvery::new(WARN_EVERY);
        loop {
            tokio::select! {
                () = &mut stopped => return,
                _ = ticks.tick() => {}
            }
            loop {
                let round = self.relay_once().await;
                let failed = match &round {
                    Ok(r) if r.delivered < r.due => r.last_error.clone(),
                    Ok(_) => None,
                    Err(e) => Some(e.message().to_owned()),
                };
                // Said at most once a minute, with how many rounds failed
                // since (the database or agents may be down).
                if let Some(error) = failed {
                    warnings.log(|held| {
                        tracing::warn!(
                            error,
                            failed_rounds_since = held,
                            "deleted subjects not yet delivered to agents; retrying with a backoff"
                        );
                    });
                }
                match round {
                    Ok(r) if r.due == BATCH as usize && r.delivered > 0 => {
                        if stop.is_triggered() {
                            return;
                        }
                    }
                    _ => break,
                }
            }
        }
    }

    /// One round: delivers up to [`BATCH`] due rows.
    pub async fn relay_once(&self) -> ApiResult<Round> {
        let due = self.due().await?;
        let mut round = Round {
            due: due.len(),
            ..Round::default()
        };
        for row in due {
            let tenant = TenantId::from(row.tenant_id);
            let ctx = TenantContext::system(tenant, "subject-relay");
            match self.deliver(&ctx, &row).await {
                Ok(cleared) => {
                    self.settle(&ctx, &row, None).await?;
                    round.delivered += 1;
                    tracing::info!(
                        %tenant,
                        subject_type = row.subject_type,
                        subject_id = %row.subject_id,
                        cleared,
                        "deleted subject delivered to agents"
                    );
                }
                Err(e) => {
                    if matches!(
                        e.code(),
                        tonic::Code::PermissionDenied
                            | tonic::Code::Unauthenticated
                            | tonic::Code::InvalidArgument
                    ) {
                        // Not a passing outage: a deployment mistake (keys,
                        // roles) that retrying will not fix by itself.
                        tracing::error!(
                            code = ?e.code(),
                            error = %e.message(),
                            "agents refuses crm's subject relay"
                        );
                    }
                    round.last_error = Some(format!("{:?}: {}", e.code(), e.message()));
                    self.settle(&ctx, &row, Some(backoff(row.attempts))).await?;
                }
            }
        }
        Ok(round)
    }

    async fn due(&self) -> ApiResult<Vec<Pending>> {
        let platform = TenantContext::system_platform("subject-relay");
        let mut tx = self.db.begin_platform(&platform).await?;
        let rows = sqlx::query_as(
            "SELECT tenant_id, subject_type, subject_id, attempts FROM deleted_subjects \
             WHERE due_at <= now() ORDER BY due_at LIMIT $1",
        )
        .bind(BATCH)
        .fetch_all(tx.conn())
        .await
        .map_err(db_error)?;
        tx.commit().await?;
        Ok(rows)
    }

    /// One call to agents; the number of actions it cleared.
    async fn deliver(&self, ctx: &TenantContext, row: &Pending) -> Result<i32, Status> {
        let subject_type = match row.subject_type.as_str() {
            "contact" => SubjectType::Contact,
            "deal" => SubjectType::Deal,
            other => {
                return Err(Status::internal(format!(
                    "deleted_subjects holds an unknown subject type {other:?}"
                )));
            }
        };
        let token = self.token.get().map_err(Status::from)?;
        let mut agents =
            ApprovalServiceClient::with_interceptor(self.agents.clone(), ctx.propagate_as(token));
        let mut request = tonic::Request::new(ClearSubjectRequest {
            subject_type: subject_type as i32,
            subject_id: row.subject_id.to_string(),
            tenant_id: row.tenant_id.to_string(),
        });
        request.set_timeout(CALL_TIMEOUT);
        match tokio::time::timeout(CALL_TIMEOUT, agents.clear_subject(request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner().cleared_count),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::deadline_exceeded("agents did not answer in time")),
        }
    }

    /// Removes a delivered row, or puts a failed one off by `retry_in`.
    async fn settle(
        &self,
        ctx: &TenantContext,
        row: &Pending,
        retry_in: Option<Duration>,
    ) -> ApiResult<()> {
        let mut tx = self.db.begin(ctx).await?;
        let sql = match retry_in {
            None => {
                "DELETE FROM deleted_subjects \
                 WHERE tenant_id = $1 AND subject_type = $2 AND subject_id = $3"
            }
            Some(_) => {
                "UPDATE deleted_subjects SET attempts = attempts + 1, \
                 due_at = now() + make_interval(secs => $4) \
                 WHERE tenant_id = $1 AND subject_type = $2 AND subject_id = $3"
            }
        };
        let mut query = sqlx::query(sql)
            .bind(row.tenant_id)
            .bind(&row.subject_type)
            .bind(row.subject_id);
        if let Some(after) = retry_in {
            query = query.bind(after.as_secs_f64());
        }
        query.execute(tx.conn()).await.map_err(db_error)?;
        tx.commit().await
    }
}

/// The wait after `attempts` failed deliveries: 1 s, 2 s, 4 s, ... up to
/// [`MAX_BACKOFF`].
fn backoff(attempts: i32) -> Duration {
    let exponent = attempts.clamp(0, 16) as u32;
    Duration::from_secs(1u64 << exponent).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(9), MAX_BACKOFF);
        assert_eq!(backoff(i32::MAX), MAX_BACKOFF);
        assert_eq!(backoff(-3), Duration::from_secs(1));
    }
}

//! SQL of actions. Every statement names `tenant_id = $1` (RLS is the
//! backstop). Every transition is one conditional UPDATE on the state it
//! leaves, on a row the handler has locked: two callers racing for one
//! transition take turns on the lock, and the second finds the state gone.

use std::time::Duration;

use mosaic_api::{ApiResult, convert};
use mosaic_db::{
    Constraint, HasMeta, OptTime, Order, RowMeta, Select, TenantTx, Time, db_error, db_error_with,
};
use mosaic_proto::StoredEnum;
use mosaic_proto::agents::{Action, ActionKind, ActionState, SubjectType};
use uuid::Uuid;

use super::NewAction;
use crate::ids::{ActionId, AgentId, ClaimId};

/// A PENDING row past its expiry: it reads as EXPIRED.
macro_rules! expired {
    () => {
        "(t.state = 'pending' AND t.expires_at <= now())"
    };
}
/// An EXECUTING row whose lease ran out: it reads as APPROVED, claimable again.
macro_rules! lapsed {
    () => {
        "(t.state = 'executing' AND t.lease_expires_at <= now())"
    };
}
const EXPIRED: &str = expired!();
const LAPSED: &str = lapsed!();

/// Select list over the alias `t`: the state as it stands now.
pub(crate) const SELECT: &str = concat!(
    "t.action_id, t.agent_id, t.kind, t.parameters, t.subject_type, t.subject_id, t.reason, ",
    "CASE WHEN ",
    expired!(),
    " THEN 'expired' WHEN ",
    lapsed!(),
    " THEN 'approved' ELSE t.state END AS state, ",
    "t.expires_at, t.decided_by, t.decided_at, t.decision_note, t.parameters_diff, ",
    "CASE WHEN ",
    lapsed!(),
    " THEN NULL ELSE t.claim_id END AS claim_id, ",
    "CASE WHEN ",
    lapsed!(),
    " THEN NULL ELSE t.lease_expires_at END AS lease_expires_at, ",
    "t.claim_id AS last_claim_id, t.attempt_count, t.result, t.error, ",
    "t.revision, t.created_at, t.updated_at, NULL::timestamptz AS deleted_at"
);

/// Backstop for the handler's live check of the agent (a purge racing the insert).
pub(crate) const CONSTRAINTS: &[Constraint] = &[Constraint {
    name: "actions_agent_fk",
    field: "action.agent_id",
    reason: "AGENT_NOT_FOUND",
}];

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ActionRow {
    pub(crate) action_id: ActionId,
    pub(crate) agent_id: Option<AgentId>,
    pub(crate) kind: String,
    pub(crate) parameters: serde_json::Value,
    pub(crate) subject_type: Option<String>,
    pub(crate) subject_id: Option<Uuid>,
    pub(crate) reason: String,
    pub(crate) state: String,
    #[sqlx(try_from = "Time")]
    pub(crate) expires_at: chrono::DateTime<chrono::Utc>,
    pub(crate) decided_by: Option<String>,
    #[sqlx(try_from = "OptTime")]
    pub(crate) decided_at: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) decision_note: String,
    pub(crate) parameters_diff: Option<serde_json::Value>,
    pub(crate) claim_id: Option<ClaimId>,
    #[sqlx(try_from = "OptTime")]
    pub(crate) lease_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The claim last written, also when its lease ran out.
    pub(crate) last_claim_id: Option<ClaimId>,
    pub(crate) attempt_count: i32,
    pub(crate) result: serde_json::Value,
    pub(crate) error: String,
    #[sqlx(flatten)]
    pub(crate) meta: RowMeta,
}

impl HasMeta for ActionRow {
    fn meta(&self) -> &RowMeta {
        &self.meta
    }
}

impl ActionRow {
    pub(crate) fn kind(&self) -> ActionKind {
        ActionKind::from_stored(&self.kind).unwrap_or_default()
    }

    pub(crate) fn state(&self) -> ActionState {
        ActionState::from_stored(&self.state).unwrap_or_default()
    }

    pub(crate) fn into_proto(self) -> Action {
        let (kind, state) = (self.kind() as i32, self.state() as i32);
        let subject_type = self
            .subject_type
            .as_deref()
            .and_then(SubjectType::from_stored)
            .unwrap_or_default() as i32;
        Action {
            action_id: self.action_id.to_string(),
            agent_id: self.agent_id.map(|id| id.to_string()).unwrap_or_default(),
            kind,
            parameters: Some(convert::json_to_struct(self.parameters)),
            subject_type,
            subject_id: self.subject_id.map(|id| id.to_string()).unwrap_or_default(),
            reason: self.reason,
            state,
            decided_by: self.decided_by.unwrap_or_default(),
            decide_time: convert::opt_timestamp(self.decided_at),
            decision_note: self.decision_note,
            parameters_diff: self.parameters_diff.map(convert::json_to_struct),
            claim_id: self.claim_id.map(|id| id.to_string()).unwrap_or_default(),
            lease_expire_time: convert::opt_timestamp(self.lease_expires_at),
            attempt_count: self.attempt_count,
            result: Some(convert::json_to_struct(self.result)),
            error: self.error,
            expire_time: Some(convert::timestamp(self.expires_at)),
            create_time: self.meta.create_time(),
            update_time: self.meta.update_time(),
            etag: self.meta.etag(),
        }
    }
}

#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn insert(
    tx: &mut TenantTx,
    id: ActionId,
    new: &NewAction,
) -> ApiResult<ActionRow> {
    let tenant = tx.tenant_id();
    let (subject_type, subject_id) = new.subject.unzip();
    sqlx::query_as(&format!(
        "INSERT INTO actions AS t (tenant_id, action_id, agent_id, kind, parameters, subject_type, \
         subject_id, reason, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(new.agent_id)
    .bind(new.kind.stored_name())
    .bind(&new.parameters)
    .bind(subject_type.map(StoredEnum::stored_name))
    .bind(subject_id)
    .bind(&new.reason)
    .bind(new.expires_at)
    .fetch_one(tx.conn())
    .await
    .map_err(|e| db_error_with(e, CONSTRAINTS))
}

/// An approver's decision.
#[derive(Debug)]
pub(crate) struct Decision {
    pub(crate) state: ActionState,
    pub(crate) decided_by: String,
    pub(crate) note: String,
    /// The approved parameters and their diff, when the approver edited them.
    pub(crate) edit: Option<(serde_json::Value, serde_json::Value)>,
}

/// PENDING (and not expired) → APPROVED or REJECTED; `None` when the row
/// is no longer PENDING.
#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn decide(
    tx: &mut TenantTx,
    id: ActionId,
    decision: &Decision,
) -> ApiResult<Option<ActionRow>> {
    let tenant = tx.tenant_id();
    let (parameters, diff) = decision.edit.clone().unzip();
    sqlx::query_as(&format!(
        "UPDATE actions AS t SET state = $3, decided_by = $4, decided_at = now(), \
         decision_note = $5, parameters = COALESCE($6, t.parameters), parameters_diff = $7, \
         revision = t.revision + 1, updated_at = now() \
         WHERE t.tenant_id = $1 AND t.action_id = $2 AND t.state = 'pending' \
           AND t.expires_at > now() RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(decision.state.stored_name())
    .bind(&decision.decided_by)
    .bind(&decision.note)
    .bind(parameters)
    .bind(diff)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)
}

/// Writes down the expiry of a PENDING row past its `expires_at` (a read
/// already shows it EXPIRED); `None` when it is not such a row.
pub(crate) async fn expire(tx: &mut TenantTx, id: ActionId) -> ApiResult<Option<ActionRow>> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "UPDATE actions AS t SET state = 'expired', revision = t.revision + 1, updated_at = now() \
         WHERE t.tenant_id = $1 AND t.action_id = $2 AND {EXPIRED} RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)
}

/// The executor's claim: up to `$2` actions for claim `$3` and a lease of
/// `$4` seconds. Those whose lease ran out first (longest lapsed first),
/// then APPROVED ones in order of approval; `SKIP LOCKED` passes over rows
/// another claimer (or an approver) holds right now, so no action is ever
/// handed out twice. Each CTE reads its own partial index.
pub(crate) const CLAIM: &str = "WITH lapsed AS ( \
         SELECT c.action_id FROM actions c \
         WHERE c.tenant_id = $1 AND c.state = 'executing' AND c.lease_expires_at <= now() \
         ORDER BY c.lease_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
     approved AS ( \
         SELECT c.action_id FROM actions c \
         WHERE c.tenant_id = $1 AND c.state = 'approved' \
         ORDER BY c.decided_at, c.action_id LIMIT $2 FOR UPDATE SKIP LOCKED) \
     UPDATE actions AS t SET state = 'executing', claim_id = $3, \
         lease_expires_at = now() + make_interval(secs => $4), \
         attempt_count = t.attempt_count + 1, revision = t.revision + 1, updated_at = now() \
     FROM (SELECT action_id FROM lapsed UNION ALL SELECT action_id FROM approved LIMIT $2) picked \
     WHERE t.tenant_id = $1 AND t.action_id = picked.action_id";

/// Runs [`CLAIM`]; the rows come back in no particular order.
#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn claim(
    tx: &mut TenantTx,
    claim: ClaimId,
    max: i32,
    lease: Duration,
) -> ApiResult<Vec<ActionRow>> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!("{CLAIM} RETURNING {SELECT}"))
        .bind(tenant)
        .bind(i64::from(max))
        .bind(claim)
        .bind(lease.as_secs_f64())
        .fetch_all(tx.conn())
        .await
        .map_err(db_error)
}

/// How an executed action ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Succeeded { result: serde_json::Value },
    Failed { error: String },
}

impl Outcome {
    pub(crate) fn state(&self) -> ActionState {
        match self {
            Self::Succeeded { .. } => ActionState::Succeeded,
            Self::Failed { .. } => ActionState::Failed,
        }
    }
}

/// EXECUTING under `claim` with its lease not run out → the outcome; `None`
/// when it is not.
#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn complete(
    tx: &mut TenantTx,
    id: ActionId,
    claim: ClaimId,
    outcome: &Outcome,
) -> ApiResult<Option<ActionRow>> {
    let tenant = tx.tenant_id();
    let (result, error) = match outcome {
        Outcome::Succeeded { result } => (result.clone(), ""),
        Outcome::Failed { error } => (serde_json::json!({}), error.as_str()),
    };
    sqlx::query_as(&format!(
        "UPDATE actions AS t SET state = $4, result = $5, error = $6, claim_id = NULL, \
         lease_expires_at = NULL, revision = t.revision + 1, updated_at = now() \
         WHERE t.tenant_id = $1 AND t.action_id = $2 AND t.state = 'executing' \
           AND t.claim_id = $3 AND t.lease_expires_at > now() RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(claim)
    .bind(outcome.state().stored_name())
    .bind(result)
    .bind(error)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)
}

/// Clears the subject of every action of the tenant that names it; returns
/// their ids.
pub(crate) async fn clear_subject(
    tx: &mut TenantTx,
    subject_type: SubjectType,
    subject_id: Uuid,
) -> ApiResult<Vec<ActionId>> {
    let tenant = tx.tenant_id();
    sqlx::query_scalar(
        "UPDATE actions AS t SET subject_type = NULL, subject_id = NULL, \
         revision = t.revision + 1, updated_at = now() \
         WHERE t.tenant_id = $1 AND t.subject_type = $2 AND t.subject_id = $3 \
         RETURNING t.action_id",
    )
    .bind(tenant)
    .bind(subject_type.stored_name())
    .bind(subject_id)
    .fetch_all(tx.conn())
    .await
    .map_err(db_error)
}

/// The filters of ListActions.
#[derive(Debug)]
pub(crate) struct ActionFilter {
    pub(crate) state: Option<ActionState>,
    pub(crate) agent: Option<AgentId>,
    pub(crate) kind: Option<ActionKind>,
    pub(crate) subject: Option<(SubjectType, Uuid)>,
    pub(crate) created_before: Option<chrono::DateTime<chrono::Utc>>,
}

/// One page in id (= creation) order, oldest first, `limit + 1` rows; the
/// state filter is on the state as reads show it.
pub(crate) fn list_page(filter: &ActionFilter, after: Option<ActionId>, limit: u32) -> Select {
    let mut sql = Select::new(format!(
        "SELECT {SELECT} FROM actions t WHERE t.tenant_id = $tenant"
    ));
    match filter.state {
        None | Some(ActionState::Unspecified) => {}
        Some(ActionState::Pending) => {
            sql.push(&format!(" AND t.state = 'pending' AND NOT {EXPIRED}"));
        }
        Some(ActionState::Expired) => {
            sql.push(&format!(" AND (t.state = 'expired' OR {EXPIRED})"));
        }
        Some(ActionState::Approved) => {
            sql.push(&format!(" AND (t.state = 'approved' OR {LAPSED})"));
        }
        Some(ActionState::Executing) => {
            sql.push(&format!(" AND t.state = 'executing' AND NOT {LAPSED}"));
        }
        Some(state) => {
            sql.push(" AND t.state = ").push_bind(state.stored_name());
        }
    }
    if let Some(agent) = filter.agent {
        sql.push(" AND t.agent_id = ").push_bind(agent.uuid());
    }
    if let Some(kind) = filter.kind {
        sql.push(" AND t.kind = ").push_bind(kind.stored_name());
    }
    if let Some((subject_type, subject_id)) = filter.subject {
        sql.push(" AND t.subject_type = ")
            .push_bind(subject_type.stored_name())
            .push(" AND t.subject_id = ")
            .push_bind(subject_id);
    }
    if let Some(before) = filter.created_before {
        sql.push(" AND t.created_at < ").push_bind(before);
    }
    sql.keyset("t.action_id", Order::Asc, after.map(ActionId::uuid), limit);
    sql
}

//! Executions of workflows: checked on the way in, appended (never updated:
//! the runtime role may not), listed newest first.

use chrono::{DateTime, Duration, Utc};
use mosaic_api::{AllOk, ApiError, ApiResult, convert, parse};
use mosaic_db::{Order, Select, TenantTx, db_error};
use mosaic_proto::StoredEnum;
use mosaic_proto::agents::{Execution, ExecutionStatus};

use crate::ids::{ExecutionId, WorkflowId};

const MAX_IO_BYTES: usize = 64 * 1024;
const MAX_ERROR: usize = 2000;
/// How far in the future a start may be (clock skew between hosts).
const MAX_SKEW: Duration = Duration::minutes(5);

/// A new execution, checked.
#[derive(Debug)]
pub(crate) struct NewExecution {
    pub(crate) workflow_id: WorkflowId,
    pub(crate) status: ExecutionStatus,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) input: serde_json::Value,
    pub(crate) output: serde_json::Value,
    pub(crate) error: String,
}

pub(crate) fn parse_new(execution: &Execution) -> ApiResult<NewExecution> {
    let (workflow_id, status, started_at, finished_at, input, output, error) = (
        parse::id("execution.workflow_id", &execution.workflow_id),
        parse::enum_value::<ExecutionStatus>("execution.status", execution.status).and_then(
            |status| match status {
                ExecutionStatus::Unspecified => {
                    Err(ApiError::invalid_argument("execution.status", "required"))
                }
                status => Ok(status),
            },
        ),
        match &execution.start_time {
            None => Err(ApiError::invalid_argument(
                "execution.start_time",
                "required",
            )),
            Some(t) => parse::datetime("execution.start_time", t),
        },
        parse::optional_time("execution.finish_time", execution.finish_time.as_ref()),
        parse::json_object("execution.input", execution.input.as_ref(), MAX_IO_BYTES),
        parse::json_object("execution.output", execution.output.as_ref(), MAX_IO_BYTES),
        parse::text("execution.error", &execution.error, MAX_ERROR),
    )
        .all_ok()?;
    if started_at > Utc::now() + MAX_SKEW {
        return Err(ApiError::invalid_argument(
            "execution.start_time",
            "at most 5 minutes in the future",
        ));
    }
    let running = status == ExecutionStatus::Running;
    match finished_at {
        Some(_) if running => {
            return Err(ApiError::invalid_argument(
                "execution.finish_time",
                "must be unset while RUNNING",
            ));
        }
        None if !running => {
            return Err(ApiError::invalid_argument(
                "execution.finish_time",
                "required once the execution has ended",
            ));
        }
        Some(finished) if finished < started_at => {
            return Err(ApiError::invalid_argument(
                "execution.finish_time",
                "must not be before start_time",
            ));
        }
        _ => {}
    }
    if !error.is_empty() && status != ExecutionStatus::Failed {
        return Err(ApiError::invalid_argument(
            "execution.error",
            "only a FAILED execution has an error",
        ));
    }
    Ok(NewExecution {
        workflow_id,
        status,
        started_at,
        finished_at,
        input,
        output,
        error,
    })
}

const SELECT: &str = "t.execution_id, t.workflow_id, t.status, t.started_at, t.finished_at, \
     t.input, t.output, t.error, t.created_at";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ExecutionRow {
    pub(crate) execution_id: ExecutionId,
    pub(crate) workflow_id: WorkflowId,
    pub(crate) status: String,
    #[sqlx(try_from = "mosaic_db::Time")]
    pub(crate) started_at: DateTime<Utc>,
    #[sqlx(try_from = "mosaic_db::OptTime")]
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) input: serde_json::Value,
    pub(crate) output: serde_json::Value,
    pub(crate) error: String,
    #[sqlx(try_from = "mosaic_db::Time")]
    pub(crate) created_at: DateTime<Utc>,
}

impl ExecutionRow {
    pub(crate) fn into_proto(self) -> Execution {
        let status = ExecutionStatus::from_stored(&self.status).unwrap_or_default();
        Execution {
            execution_id: self.execution_id.to_string(),
            workflow_id: self.workflow_id.to_string(),
            status: status as i32,
            start_time: Some(convert::timestamp(self.started_at)),
            finish_time: convert::opt_timestamp(self.finished_at),
            input: Some(convert::json_to_struct(self.input)),
            output: Some(convert::json_to_struct(self.output)),
            error: self.error,
            create_time: Some(convert::timestamp(self.created_at)),
        }
    }
}

#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn insert(
    tx: &mut TenantTx,
    id: ExecutionId,
    new: &NewExecution,
) -> ApiResult<ExecutionRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "INSERT INTO executions AS t (tenant_id, execution_id, workflow_id, status, started_at, \
         finished_at, input, output, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(new.workflow_id)
    .bind(new.status.stored_name())
    .bind(new.started_at)
    .bind(new.finished_at)
    .bind(&new.input)
    .bind(&new.output)
    .bind(&new.error)
    .fetch_one(tx.conn())
    .await
    .map_err(db_error)
}

/// Newest first (ids are UUIDv7), `limit + 1` rows.
pub(crate) fn list_page(
    workflow: Option<WorkflowId>,
    status: Option<ExecutionStatus>,
    after: Option<ExecutionId>,
    limit: u32,
) -> Select {
    let mut sql = Select::new(format!(
        "SELECT {SELECT} FROM executions t WHERE t.tenant_id = $tenant"
    ));
    if let Some(workflow) = workflow {
        sql.push(" AND t.workflow_id = ").push_bind(workflow.uuid());
    }
    if let Some(status) = status {
        sql.push(" AND t.status = ").push_bind(status.stored_name());
    }
    sql.keyset(
        "t.execution_id",
        Order::Desc,
        after.map(ExecutionId::uuid),
        limit,
    );
    sql
}

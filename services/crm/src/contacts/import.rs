//! `ImportContacts`: a client stream of contact rows, upserted by email.
//!
//! Rows are numbered from 0 across the whole stream. Each is validated on its
//! own; a bad row becomes a failure entry and never blocks the good ones.
//! Good rows collect into batches of [`BATCH_ROWS`]; a batch is written by
//! one `INSERT ... SELECT FROM UNNEST ... ON CONFLICT DO UPDATE` in its own
//! transaction, opened only once the batch is complete, while the stream
//! goes on being read into the next batch; a batch commits before the next
//! one starts. So a transaction never waits on the client (no
//! idle-in-transaction timeouts on slow senders), and a stream that breaks
//! leaves no half-applied batch: the batch being collected is simply
//! dropped. Complete batches stay, which is safe because an import is an
//! upsert: sending the whole stream again converges on the same rows.

use std::collections::{HashMap, HashSet};

use mosaic_api::error::FieldViolation;
use mosaic_api::{ApiError, ApiResult};
use mosaic_db::{Database, TenantContext};
use mosaic_proto::crm::{ImportContactsFailure, ImportContactsRequest, ImportContactsResponse};
use mosaic_server::ClientGone;
use tokio::task::JoinHandle;
use tonic::{Status, Streaming};
use uuid::Uuid;

use super::{ContactFields, ContactPatch, storage};
use crate::companies;
use crate::ids::CompanyId;

/// Rows per upsert statement and transaction.
pub const BATCH_ROWS: usize = 1000;
/// Rows one import stream may carry.
pub const MAX_IMPORT_ROWS: i64 = 1_000_000;
/// At most this many failures are listed (all are counted).
pub const MAX_FAILURES_LISTED: usize = 10_000;
/// Longest failure description, so a full failure list stays far below the
/// message size limit.
const MAX_DESCRIPTION_CHARS: usize = 200;

/// A validated row waiting for its batch.
struct Pending {
    index: i64,
    fields: ContactFields,
}

fn failure(
    index: i64,
    field: &str,
    reason: &str,
    mut description: String,
) -> ImportContactsFailure {
    if let Some((cut, _)) = description.char_indices().nth(MAX_DESCRIPTION_CHARS) {
        description.truncate(cut);
    }
    ImportContactsFailure {
        row_index: index,
        field: field.to_owned(),
        reason: reason.to_owned(),
        description,
    }
}

#[derive(Default)]
struct Report {
    created: i64,
    updated: i64,
    failed: i64,
    failures: Vec<ImportContactsFailure>,
}

impl Report {
    /// Records a failure. Rows fail in stream order while they are parsed,
    /// so once the list is full later ones can be left out; a batch's
    /// company failures (older rows) go through [`Report::fail_older`].
    fn fail(&mut self, index: i64, field: &str, reason: &str, description: String) {
        self.failed += 1;
        if self.failures.len() < MAX_FAILURES_LISTED {
            self.failures
                .push(failure(index, field, reason, description));
        }
    }

    /// Records failures of rows that may precede listed ones, keeping the
    /// list exactly the first [`MAX_FAILURES_LISTED`] in stream order.
    fn fail_older(&mut self, indexes: &[i64], field: &str, reason: &str, description: &str) {
        if indexes.is_empty() {
            return;
        }
        self.failed += indexes.len() as i64;
        self.failures.extend(
            indexes
                .iter()
                .map(|&index| failure(index, field, reason, description.to_owned())),
        );
        self.failures.sort_by_key(|failure| failure.row_index);
        self.failures.truncate(MAX_FAILURES_LISTED);
    }

    /// One entry per bad row: the first field at fault, every description.
    fn invalid(&mut self, index: i64, error: &ApiError) {
        let violations: &[FieldViolation] = error.violations();
        let field = violations
            .first()
            .map(|v| v.field.as_str())
            .unwrap_or_default();
        let description = if violations.is_empty() {
            error.message().to_owned()
        } else {
            violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect::<Vec<_>>()
                .join("; ")
        };
        self.fail(index, field, error.reason(), description);
    }
}

/// What one written batch adds to the report.
struct Written {
    created: i64,
    updated: i64,
    bad_company: Vec<i64>,
}

impl Report {
    fn add(&mut self, written: Written) {
        self.created += written.created;
        self.updated += written.updated;
        self.fail_older(
            &written.bad_company,
            "company_id",
            "COMPANY_NOT_FOUND",
            "company_id: company not found",
        );
    }
}

/// The batch being written, by a task of its own, while the next one is read
/// and validated: at most one, so batches still commit one after another, in
/// stream order. If the call is dropped (the
/// client went away or its deadline passed) the task is aborted, so no batch
/// starts committing after the caller stopped waiting; a batch is one
/// transaction, so it lands whole or not at all either way.
#[derive(Default)]
struct InFlight(Option<JoinHandle<ApiResult<Written>>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(write) = &self.0 {
            write.abort();
        }
    }
}

/// Waits for the batch in flight, if any, and counts it. The handle stays
/// in `in_flight` while awaited, so dropping the call aborts it.
async fn settle(in_flight: &mut InFlight, report: &mut Report) -> ApiResult<()> {
    if let Some(write) = in_flight.0.as_mut() {
        let written = write.await;
        in_flight.0 = None;
        report.add(written.map_err(ApiError::internal)??);
    }
    Ok(())
}

/// Reads the stream to its end. A complete batch is written by a task of
/// its own while the stream goes on being read and validated (the database
/// and the decoding overlap), and is awaited before the next batch starts.
pub async fn run(
    db: &Database,
    ctx: &TenantContext,
    mut stream: Streaming<ImportContactsRequest>,
    gone: ClientGone,
) -> Result<ImportContactsResponse, Status> {
    let import_id = Uuid::now_v7();
    let mut report = Report::default();
    let mut batch: Vec<Pending> = Vec::with_capacity(BATCH_ROWS);
    let mut in_flight = InFlight::default();
    let mut next_index: i64 = 0;
    loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            // tonic ends a stream the client reset as if it were finished:
            // rows sent before a cancel are not a complete import.
            Ok(None) if gone.is_gone() => {
                let _ = settle(&mut in_flight, &mut report).await;
                return Err(Status::cancelled(
                    "the client cancelled the import; rows after the last complete batch were not written",
                ));
            }
            Ok(None) => break,
            Err(status) => {
                // The client failed or cancelled. A complete batch already
                // handed to the database may finish; the partial one is
                // dropped with `batch`, never written.
                let _ = settle(&mut in_flight, &mut report).await;
                return Err(status);
            }
        };
        if next_index + message.contacts.len() as i64 > MAX_IMPORT_ROWS {
            // Complete batches already written stay (the reply of an error
            // cannot count them; the audit trail under the import id does).
            let _ = settle(&mut in_flight, &mut report).await;
            return Err(ApiError::invalid_argument(
                "contacts",
                format!("at most {MAX_IMPORT_ROWS} rows per import stream; split the import"),
            )
            .into());
        }
        for contact in &message.contacts {
            let index = next_index;
            next_index += 1;
            match ContactPatch::parse_new(contact, "") {
                Ok(fields) => batch.push(Pending { index, fields }),
                Err(error) => report.invalid(index, &error),
            }
            if batch.len() == BATCH_ROWS {
                settle(&mut in_flight, &mut report).await?;
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
                let (db, ctx) = (db.clone(), ctx.clone());
                in_flight.0 = Some(tokio::spawn(async move {
                    write_batch(&db, &ctx, import_id, full).await
                }));
            }
        }
    }
    settle(&mut in_flight, &mut report).await?;
    if !batch.is_empty() {
        report.add(write_batch(db, ctx, import_id, batch).await?);
    }
    tracing::info!(
        import = %import_id,
        rows = next_index,
        created = report.created,
        updated = report.updated,
        failed = report.failed,
        "contacts imported"
    );
    Ok(ImportContactsResponse {
        import_id: import_id.to_string(),
        created_count: report.created,
        updated_count: report.updated,
        failed_count: report.failed,
        failures_truncated: report.failed > report.failures.len() as i64,
        failures: report.failures,
    })
}

/// Writes one batch in one transaction. Rows naming a company that is not
/// live in this tenant fail on their own. Within the batch, a later row
/// with the same email supersedes an earlier one (as if applied in order:
/// the earlier creates or updates, the later updates). Counts are reported
/// only once committed: the reply describes what is stored.
async fn write_batch(
    db: &Database,
    ctx: &TenantContext,
    import_id: Uuid,
    batch: Vec<Pending>,
) -> ApiResult<Written> {
    let mut tx = db.begin(ctx).await?;

    let referenced: Vec<CompanyId> = batch
        .iter()
        .filter_map(|pending| pending.fields.company_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let live = companies::RESOURCE.live_ids(&mut tx, &referenced).await?;
    let mut bad_company: Vec<i64> = Vec::new();
    let mut last_by_email: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
    for (position, pending) in batch.iter().enumerate() {
        if pending
            .fields
            .company_id
            .is_some_and(|company| !live.contains(&company))
        {
            bad_company.push(pending.index);
        } else {
            last_by_email.insert(pending.fields.email.as_str(), position);
        }
    }
    let good = batch.len() - bad_company.len();
    // Email order: two imports touching the same contacts lock them in the
    // same order and wait on each other instead of deadlocking.
    let mut rows: Vec<&ContactFields> = last_by_email
        .into_values()
        .map(|position| &batch[position].fields)
        .collect();
    rows.sort_unstable_by(|a, b| a.email.cmp(&b.email));
    let superseded = (good - rows.len()) as i64;

    let storage::UpsertCounts { created, updated } = storage::upsert_batch(&mut tx, &rows).await?;
    tx.audit(
        "contact.import",
        "contact",
        import_id,
        serde_json::json!({ "created": created, "updated": updated + superseded, "rows": good }),
    )
    .await?;
    tx.commit().await?;
    Ok(Written {
        created,
        updated: updated + superseded,
        bad_company,
    })
}

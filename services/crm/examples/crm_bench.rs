//! Helper of `tests/bench/crm.sh` (not a test, not shipped):
//!
//! ```text
//! crm_bench import ADDR TOKEN ROWS TAG PER_MESSAGE   ImportContacts over gRPC, prints figures
//! crm_bench raw TENANT ROWS TAG                      the same rows, bound INSERT ... SELECT FROM UNNEST
//! crm_bench sql TENANT ROWS TAG                      the same rows as a psql script (literal arrays)
//! ```
//!
//! Every mode makes the same rows from `(i, TAG)` (see [`row`]), in batches of
//! 1000 per transaction, as the service does. Figures are printed as one
//! `key=value` line for the script to read.

use std::time::Instant;

use anyhow::{Context, bail};
use mosaic_proto::crm::{
    Contact, ImportContactsRequest, contact_service_client::ContactServiceClient,
};
use sqlx::Connection;
use uuid::Uuid;

const BATCH: usize = 1000;

/// Row `i` of a run: about what a CRM export carries. Every tenth row is
/// tagged `bench-vip` (the filtered-list benchmark reads those).
struct Row {
    email: String,
    full_name: String,
    title: &'static str,
    phone: &'static str,
    tags: Vec<&'static str>,
    metadata: serde_json::Value,
}

fn row(i: usize, tag: &str) -> Row {
    Row {
        email: format!("r{i}-{tag}@bench.example"),
        full_name: format!("Bench Contact {i}"),
        title: "Engineer",
        phone: "+1 555 0100",
        tags: if i.is_multiple_of(10) {
            vec!["bench", "bench-vip"]
        } else {
            vec!["bench"]
        },
        metadata: serde_json::json!({ "source": "bench", "n": i }),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, name: &str| {
        args.get(i)
            .cloned()
            .with_context(|| format!("missing {name}"))
    };
    match args.first().map(String::as_str) {
        Some("import") => {
            import(
                &arg(1, "ADDR")?,
                &arg(2, "TOKEN")?,
                arg(3, "ROWS")?.parse()?,
                &arg(4, "TAG")?,
                arg(5, "PER_MESSAGE")?.parse()?,
            )
            .await
        }
        Some("raw") => {
            raw(
                arg(1, "TENANT")?.parse()?,
                arg(2, "ROWS")?.parse()?,
                &arg(3, "TAG")?,
            )
            .await
        }
        Some("sql") => {
            sql(
                arg(1, "TENANT")?.parse()?,
                arg(2, "ROWS")?.parse()?,
                &arg(3, "TAG")?,
            );
            Ok(())
        }
        _ => bail!(
            "usage: crm_bench import ADDR TOKEN ROWS TAG PER_MESSAGE | raw TENANT ROWS TAG | sql TENANT ROWS TAG"
        ),
    }
}

fn crm_url() -> String {
    std::env::var("MOSAIC_CRM_DATABASE_URL")
        .unwrap_or_else(|_| mosaic_db::config::default_url("crm"))
}

async fn import(
    addr: &str,
    token: &str,
    rows: usize,
    tag: &str,
    per_message: usize,
) -> anyhow::Result<()> {
    // Messages are built before the clock starts: the figure is the service's.
    let contacts: Vec<Contact> = (0..rows)
        .map(|i| {
            let r = row(i, tag);
            Contact {
                email: r.email,
                full_name: r.full_name,
                title: r.title.to_owned(),
                phone: r.phone.to_owned(),
                tags: r.tags.iter().map(|t| (*t).to_owned()).collect(),
                metadata: Some(mosaic_api::convert::json_to_struct(r.metadata)),
                ..Default::default()
            }
        })
        .collect();
    let messages: Vec<ImportContactsRequest> = contacts
        .chunks(per_message.max(1))
        .map(|c| ImportContactsRequest {
            contacts: c.to_vec(),
        })
        .collect();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = ContactServiceClient::new(channel).max_encoding_message_size(64 * 1024 * 1024);
    let mut req = tonic::Request::new(tokio_stream::iter(messages));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let start = Instant::now();
    let reply = client.import_contacts(req).await?.into_inner();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "rows={rows} seconds={secs:.3} rows_per_sec={:.0} created={} updated={} failed={}",
        rows as f64 / secs,
        reply.created_count,
        reply.updated_count,
        reply.failed_count
    );
    Ok(())
}

/// The floor for the import: the same rows, bound as arrays, one plain
/// `INSERT ... SELECT FROM UNNEST` per transaction of 1000, as the runtime
/// role under RLS; no validation, no upsert, no audit, no gRPC.
async fn raw(tenant: Uuid, rows: usize, tag: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(&crm_url()).await?;
    let all: Vec<Row> = (0..rows).map(|i| row(i, tag)).collect();
    let start = Instant::now();
    for chunk in all.chunks(BATCH) {
        let ids: Vec<Uuid> = chunk.iter().map(|_| Uuid::now_v7()).collect();
        let emails: Vec<&str> = chunk.iter().map(|r| r.email.as_str()).collect();
        let names: Vec<&str> = chunk.iter().map(|r| r.full_name.as_str()).collect();
        let titles: Vec<&str> = chunk.iter().map(|r| r.title).collect();
        let phones: Vec<&str> = chunk.iter().map(|r| r.phone).collect();
        let tags: Vec<String> = chunk.iter().map(|r| r.tags.join("\u{1f}")).collect();
        let metadata: Vec<&serde_json::Value> = chunk.iter().map(|r| &r.metadata).collect();
        let mut tx = conn
            .begin_with(format!("BEGIN; SET LOCAL mosaic.tenant_id = '{tenant}'"))
            .await?;
        sqlx::query(
            "INSERT INTO contacts (tenant_id, contact_id, email, full_name, title, phone, tags, metadata) \
             SELECT $1, u.contact_id, u.email, u.full_name, u.title, u.phone, string_to_array(u.tags, E'\\x1f'), u.metadata \
             FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::jsonb[]) \
                  AS u(contact_id, email, full_name, title, phone, tags, metadata)",
        )
        .bind(tenant)
        .bind(&ids)
        .bind(&emails)
        .bind(&names)
        .bind(&titles)
        .bind(&phones)
        .bind(&tags)
        .bind(&metadata)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "rows={rows} seconds={secs:.3} rows_per_sec={:.0}",
        rows as f64 / secs
    );
    Ok(())
}

/// An element of a Postgres array literal: double-quoted, `"` and `\` escaped.
fn element(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// An array literal inside a SQL string literal (`'` doubled).
fn array(items: impl Iterator<Item = String>) -> String {
    let body: Vec<String> = items.map(|s| element(&s)).collect();
    format!("'{{{}}}'", body.join(",").replace('\'', "''"))
}

/// The same rows as a psql script: per 1000 rows `BEGIN; SET LOCAL; INSERT
/// ... SELECT FROM unnest(<literal arrays>); COMMIT`.
fn sql(tenant: Uuid, rows: usize, tag: &str) {
    let all: Vec<Row> = (0..rows).map(|i| row(i, tag)).collect();
    for chunk in all.chunks(BATCH) {
        println!("BEGIN;\nSET LOCAL mosaic.tenant_id = '{tenant}';");
        println!(
            "INSERT INTO contacts (tenant_id, contact_id, email, full_name, title, phone, tags, metadata) \
             SELECT '{tenant}', u.contact_id, u.email, u.full_name, u.title, u.phone, string_to_array(u.tags, ','), u.metadata \
             FROM unnest({}::uuid[], {}::text[], {}::text[], {}::text[], {}::text[], {}::text[], {}::jsonb[]) \
             AS u(contact_id, email, full_name, title, phone, tags, metadata);",
            array(chunk.iter().map(|_| Uuid::now_v7().to_string())),
            array(chunk.iter().map(|r| r.email.clone())),
            array(chunk.iter().map(|r| r.full_name.clone())),
            array(chunk.iter().map(|r| r.title.to_owned())),
            array(chunk.iter().map(|r| r.phone.to_owned())),
            array(chunk.iter().map(|r| r.tags.join(","))),
            array(chunk.iter().map(|r| r.metadata.to_string())),
        );
        println!("COMMIT;");
    }
}

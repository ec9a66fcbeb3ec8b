//! Rows 1 and 2: PostgreSQL crashed (`pg_ctl stop -m immediate`, then
//! started again) and hung (SIGSTOP of the postmaster and every backend)
//! under a mixed load on identity, crm, agents and billing: GetTenant,
//! CreateContact, CreateAgent and Consume, two workers each.
//!
//! Row 1 bars: during the outage only UNAVAILABLE (no INTERNAL, no other
//! code, no call past its deadline + 200 ms); >= 99% success from 5 s after
//! PostgreSQL accepts connections again; every acknowledged create and
//! consume is in the database afterwards; the outage's log stays bounded
//! by causes and connections, not calls (at most 100 warnings, the most
//! repeated one at most 1% of the failed calls).
//!
//! Row 2 bars: every call started during the hang ends within its deadline
//! plus 200 ms, as DEADLINE_EXCEEDED or UNAVAILABLE (or OK); health goes
//! NOT_SERVING during it and SERVING after; the same process (no restart)
//! serves >= 99% from 5 s after SIGCONT.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use mosaic_core::TenantId;
use mosaic_proto::agents::{Agent, CreateAgentRequest, agent_service_client::AgentServiceClient};
use mosaic_proto::billing::{ConsumeRequest, credit_service_client::CreditServiceClient};
use mosaic_proto::crm::{
    Contact, CreateContactRequest, contact_service_client::ContactServiceClient,
};
use mosaic_proto::identity::{GetTenantRequest, tenant_service_client::TenantServiceClient};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use uuid::Uuid;

use crate::Profile;
use crate::card::Row;
use crate::deps::Deps;
use crate::load::{self, Call, CallLog, Outcome, Window, ms};
use crate::server::{LogLine, Mosaic, authed, log_field};

const WORKERS: usize = 8;

/// The mixed load: worker `w` runs method `w % 4`. A call the server does
/// not end by its deadline + 2 s is given up and logged as `Unknown`
/// ("client gave up"), so a hang shows in the figures instead of stalling them.
fn mixed(
    channel: Channel,
    token: String,
    tenant: TenantId,
    deadline: Duration,
) -> impl Fn(usize, u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |worker, n| {
        let channel = channel.clone();
        let token = token.clone();
        let tenant = tenant.to_string();
        Box::pin(async move {
            let call = async {
                match worker % 4 {
                    0 => {
                        let r = TenantServiceClient::new(channel)
                            .get_tenant(authed(
                                GetTenantRequest {
                                    tenant_id: tenant.clone(),
                                },
                                &token,
                                deadline,
                            ))
                            .await;
                        ("GetTenant", tenant, r.map(drop))
                    }
                    1 => {
                        let email =
                            format!("w{worker}-{n}-{}@example.com", Uuid::new_v4().simple());
                        let r = ContactServiceClient::new(channel)
                            .create_contact(authed(
                                CreateContactRequest {
                                    contact: Some(Contact {
                                        email: email.clone(),
                                        ..Default::default()
                                    }),
                                    request_id: String::new(),
                                },
                                &token,
                                deadline,
                            ))
                            .await;
                        match r {
                            Ok(c) => ("CreateContact", c.into_inner().contact_id, Ok(())),
                            Err(e) => ("CreateContact", email, Err(e)),
                        }
                    }
                    2 => {
                        let r = AgentServiceClient::new(channel)
                            .create_agent(authed(
                                CreateAgentRequest {
                                    agent: Some(Agent {
                                        display_name: format!("w{worker}-{n}"),
                                        model: "gpt-4o-mini".into(),
                                        enabled: true,
                                        ..Default::default()
                                    }),
                                    request_id: String::new(),
                                },
                                &token,
                                deadline,
                            ))
                            .await;
                        match r {
                            Ok(a) => ("CreateAgent", a.into_inner().agent_id, Ok(())),
                            Err(e) => ("CreateAgent", String::new(), Err(e)),
                        }
                    }
                    _ => {
                        let key = format!("k-{}", Uuid::now_v7().simple());
                        let r = CreditServiceClient::new(channel)
                            .consume(authed(
                                ConsumeRequest {
                                    tenant_id: String::new(),
                                    amount: 1,
                                    idempotency_key: key.clone(),
                                    reference: "faults".into(),
                                },
                                &token,
                                deadline,
                            ))
                            .await;
                        ("Consume", key, r.map(drop))
                    }
                }
            };
            match tokio::time::timeout(deadline + Duration::from_secs(2), call).await {
                Ok(outcome) => outcome,
                Err(_) => (
                    "hung",
                    String::new(),
                    Err(Status::unknown("client gave up")),
                ),
            }
        })
    }
}

pub(crate) async fn crash(deps: &Deps, p: Profile) -> anyhow::Result<Vec<Row>> {
    let deadline = Duration::from_secs(2);
    let mosaic = Mosaic::start(&deps.env()).await?;
    let tenant = mosaic.new_tenant(&deps.tokens, 1_000_000_000).await?;
    let token = deps.tokens.owner(tenant);
    let log = CallLog::new();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load::spawn(
        &log,
        WORKERS,
        None,
        &stop,
        mixed(mosaic.channel.clone(), token, tenant, deadline),
    );
    let total = p.secs(14.0, 30.0);
    let before = p.secs(4.0, 10.0);
    let down_for = p.secs(2.0, 3.0);
    tokio::time::sleep(before).await;
    let crashed = Instant::now();
    tokio::task::block_in_place(|| deps.pg().crash())?;
    tokio::time::sleep(down_for).await;
    let restarting = Instant::now();
    tokio::task::block_in_place(|| deps.pg().restart())?;
    let up = Instant::now();
    // At least 7 s after the database is back, to see the recovery.
    let until = (log.t0 + total).max(up + Duration::from_secs(7));
    tokio::time::sleep_until(until.into()).await;
    load::stop(&stop, tasks).await;
    let ended = Instant::now();
    let path = log.save("row1-postgres-crash");
    let calls = log.calls();

    // During: calls that overlap the outage (started before the crash and
    // ended after it, or started before the database accepted again).
    let during: Vec<&Call> = calls
        .iter()
        .filter(|c| c.end() >= crashed && c.start < up + Duration::from_secs(1))
        .collect();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for c in during.iter().filter(|c| c.code != Code::Ok) {
        *codes
            .entry(format!("{:?} {}", c.code, c.detail))
            .or_default() += 1;
    }
    let bad_codes = during
        .iter()
        .filter(|c| !matches!(c.code, Code::Ok | Code::Unavailable))
        .count();
    let overdue = during
        .iter()
        .filter(|c| c.took > deadline + Duration::from_millis(200))
        .count();
    let recovery = Window::of(&calls, up + Duration::from_secs(5), ended);
    let first_ok = calls
        .iter()
        .filter(|c| c.start >= up && c.code == Code::Ok)
        .map(|c| c.end().duration_since(up))
        .min();

    let lost = lost_writes(deps, &calls).await?;
    let logs = mosaic.logs_between(crashed, up + Duration::from_secs(2));
    let (warnings, top, top_count) = log_figures(&logs);
    let failed = during.iter().filter(|c| c.code != Code::Ok).count();
    // Bounded: by causes and connections, never by calls.
    let pass = bad_codes == 0
        && overdue == 0
        && recovery.success() >= 0.99
        && lost.lost == 0
        && top_count * 100 <= failed.max(1)
        && warnings <= 100;
    let per_call = logs.len().saturating_sub(warnings);
    Ok(vec![Row::new(
        "1",
        format!(
            "postgres crash (-m immediate, down {} s, restart {}) {} s into a {} s mixed load, c={WORKERS}",
            down_for.as_secs(),
            ms(up.duration_since(restarting)),
            before.as_secs(),
            total.as_secs()
        ),
        format!(
            "outage calls: {} ({}); not UNAVAILABLE: {bad_codes}; past deadline+200 ms: {overdue}; \
             first OK {} after up; success from up+5 s {:.2}% of {}; acknowledged writes {} checked, {} lost; \
             outage log: {warnings} warnings/errors, the most repeated {top_count}× ({top}), \
             beside {per_call} info lines (one `rpc finished` per failed call); calls {path}",
            during.len(),
            text(&codes),
            first_ok.map(ms).unwrap_or_else(|| "never".into()),
            recovery.success() * 100.0,
            recovery.calls,
            lost.checked,
            lost.lost,
        ),
        "only UNAVAILABLE; none past deadline+200 ms; >= 99% from up+5 s; 0 lost; \
         <= 100 warnings, none said once per failed call (the most repeated <= 1% of them)",
        pass,
    )])
}

pub(crate) async fn hang(deps: &Deps, p: Profile) -> anyhow::Result<Vec<Row>> {
    let deadline = Duration::from_secs(1);
    let mut mosaic = Mosaic::start(&deps.env()).await?;
    let pid = mosaic.pid();
    let tenant = mosaic.new_tenant(&deps.tokens, 1_000_000_000).await?;
    let token = deps.tokens.owner(tenant);
    let log = CallLog::new();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load::spawn(
        &log,
        WORKERS,
        None,
        &stop,
        mixed(mosaic.channel.clone(), token, tenant, deadline),
    );
    let hang_for = p.secs(5.0, 10.0);
    tokio::time::sleep(p.secs(2.0, 5.0)).await;
    let frozen = Instant::now();
    deps.pg().freeze()?;
    let mut health_during = Vec::new();
    while frozen.elapsed() < hang_for {
        health_during.push(mosaic.health("").await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    deps.pg().thaw();
    let thawed = Instant::now();
    let mut serving_after = None;
    while thawed.elapsed() < Duration::from_secs(15) {
        if mosaic.health("").await == Some(ServingStatus::Serving) {
            serving_after = Some(thawed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(thawed.elapsed())).await;
    load::stop(&stop, tasks).await;
    let ended = Instant::now();
    let path = log.save("row2-postgres-hang");
    let calls = log.calls();
    let during: Vec<&Call> = calls
        .iter()
        .filter(|c| c.start >= frozen && c.start < thawed)
        .collect();
    let overdue = during
        .iter()
        .filter(|c| c.took > deadline + Duration::from_millis(200))
        .count();
    let slowest = during.iter().map(|c| c.took).max().unwrap_or_default();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for c in during.iter().filter(|c| c.code != Code::Ok) {
        *codes
            .entry(format!("{:?} {}", c.code, c.detail))
            .or_default() += 1;
    }
    let bad_codes = during
        .iter()
        .filter(|c| {
            !matches!(
                c.code,
                Code::Ok | Code::Unavailable | Code::DeadlineExceeded
            )
        })
        // tonic's client ends a call at its own deadline as CANCELLED "Timeout
        // expired": that is DEADLINE_EXCEEDED seen from the client.
        .filter(|c| !(c.code == Code::Cancelled && c.detail == "Timeout expired"))
        .count();
    // And the server's side: every call it finished during the hang, by
    // code, and the longest it held one (from its `rpc finished` lines).
    let mut server_codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut server_longest = 0f64;
    for line in mosaic.logs_between(frozen, thawed + Duration::from_millis(500)) {
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&line.text) else {
            continue;
        };
        if log_field(&json, "message").as_deref() != Some("rpc finished") {
            continue;
        }
        *server_codes
            .entry(log_field(&json, "code").unwrap_or_default())
            .or_default() += 1;
        let took = log_field(&json, "duration_ms")
            .and_then(|d| d.parse::<f64>().ok())
            .unwrap_or_default();
        server_longest = server_longest.max(took);
    }
    let server_overdue = server_longest > (deadline.as_secs_f64() * 1000.0 + 200.0);
    let not_serving = health_during.contains(&Some(ServingStatus::NotServing));
    let recovery = Window::of(&calls, thawed + Duration::from_secs(5), ended);
    let same_process = mosaic.running() && mosaic.pid() == pid;
    let pass = overdue == 0
        && !server_overdue
        && bad_codes == 0
        && not_serving
        && serving_after.is_some()
        && recovery.success() >= 0.99
        && same_process;
    Ok(vec![Row::new(
        "2",
        format!(
            "postgres hang (SIGSTOP {} s) under the mixed load, c={WORKERS}, deadline {}",
            hang_for.as_secs(),
            ms(deadline)
        ),
        format!(
            "{} calls during ({}); past deadline+200 ms: {overdue} (slowest {}); other codes: {bad_codes}; \
             the server ended {} (longest {server_longest:.0} ms); \
             health NOT_SERVING during: {not_serving}, SERVING {} after SIGCONT; \
             success from SIGCONT+5 s {:.2}% of {}; same process: {same_process}; calls {path}",
            during.len(),
            text(&codes),
            ms(slowest),
            text(&server_codes),
            serving_after.map(ms).unwrap_or_else(|| "never".into()),
            recovery.success() * 100.0,
            recovery.calls,
        ),
        "none past deadline+200 ms (client and server); only DEADLINE_EXCEEDED (tonic's client: \
         CANCELLED \"Timeout expired\")/UNAVAILABLE; NOT_SERVING then SERVING; \
         >= 99% from SIGCONT+5 s without a restart",
        pass,
    )])
}

fn text(codes: &BTreeMap<String, usize>) -> String {
    if codes.is_empty() {
        return "all OK".into();
    }
    codes
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Lost {
    checked: usize,
    lost: usize,
}

/// Every OK create and consume, looked up in the database as the superuser.
async fn lost_writes(deps: &Deps, calls: &[Call]) -> anyhow::Result<Lost> {
    let ok = |method: &str| -> Vec<String> {
        calls
            .iter()
            .filter(|c| c.code == Code::Ok && c.method == method)
            .map(|c| c.key.clone())
            .collect()
    };
    let contacts: Vec<Uuid> = ok("CreateContact")
        .iter()
        .filter_map(|k| k.parse().ok())
        .collect();
    let agents: Vec<Uuid> = ok("CreateAgent")
        .iter()
        .filter_map(|k| k.parse().ok())
        .collect();
    let keys = ok("Consume");
    let mut db = deps.admin_db().await?;
    let found_contacts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM crm.contacts WHERE contact_id = ANY($1)")
            .bind(&contacts)
            .fetch_one(&mut db)
            .await?;
    let found_agents: i64 =
        sqlx::query_scalar("SELECT count(*) FROM agents.agents WHERE agent_id = ANY($1)")
            .bind(&agents)
            .fetch_one(&mut db)
            .await?;
    let found_keys: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM billing.ledger_entries WHERE idempotency_key = ANY($1)",
    )
    .bind(&keys)
    .fetch_one(&mut db)
    .await?;
    let checked = contacts.len() + agents.len() + keys.len();
    let found = (found_contacts + found_agents + found_keys) as usize;
    Ok(Lost {
        checked,
        lost: checked.saturating_sub(found),
    })
}

/// Warnings and errors: how many, the most repeated ones (message and
/// target) and how often the first of them was said.
fn log_figures(logs: &[LogLine]) -> (usize, String, usize) {
    let mut by_message: BTreeMap<String, usize> = BTreeMap::new();
    for line in logs {
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&line.text) else {
            *by_message.entry(line.text.clone()).or_default() += 1;
            continue;
        };
        let level = json["level"].as_str().unwrap_or_default();
        if !(level.eq_ignore_ascii_case("warn") || level.eq_ignore_ascii_case("error")) {
            continue;
        }
        let message = log_field(&json, "message").unwrap_or_default();
        *by_message.entry(message).or_default() += 1;
    }
    let warnings = by_message.values().sum();
    let mut ranked: Vec<(String, usize)> = by_message.into_iter().collect();
    ranked.sort_by_key(|r| std::cmp::Reverse(r.1));
    let top = ranked
        .iter()
        .take(4)
        .map(|(m, n)| format!("{m:?} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    (warnings, top, ranked.first().map(|r| r.1).unwrap_or(0))
}

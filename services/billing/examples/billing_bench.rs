//! Helper of `tests/bench/billing.sh` (not a test, not shipped):
//!
//! ```text
//! billing_bench setup ADDR TOKEN ACCOUNTS CREDITS      tops up accounts 1..=ACCOUNTS with CREDITS each
//! billing_bench consume ADDR TOKEN ACCOUNTS CONC SECS  Consume over gRPC, CONC connections, one
//!                                                      call in flight on each (as h2load -m 1)
//! billing_bench reconcile ADDR TOKEN ACCOUNTS          Reconcile of accounts 1..=ACCOUNTS, summed
//! ```
//!
//! h2load sends one request body to every call, and a Consume body carries
//! its idempotency key: every call after the first would be a replay of the
//! first. So this client makes each call's body itself: a fresh key, amount 1,
//! and account `1 + i % ACCOUNTS` for the i-th call of a connection (account
//! `n` is tenant `00000000-0000-4000-8000-<n, 12 digits>`, the ids the
//! pgbench script computes too). It runs on one thread, like `h2load -t 1`.
//! Figures are printed as one `key=value` line for the script to read.

use std::time::{Duration, Instant};

use mosaic_proto::billing::{
    ConsumeRequest, ReconcileRequest, TopUpRequest, credit_service_client::CreditServiceClient,
};
use tonic::transport::{Channel, Endpoint};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The tenant id of bench account `n` (1-based).
fn account(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn request<T>(message: T, token: &str) -> Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

async fn connect(addr: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> Result<&str> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("missing argument {i}").into())
    };
    match arg(0)? {
        "setup" => setup(arg(1)?, arg(2)?, arg(3)?.parse()?, arg(4)?.parse()?).await,
        "consume" => {
            consume(
                arg(1)?,
                arg(2)?,
                arg(3)?.parse()?,
                arg(4)?.parse()?,
                Duration::from_secs(arg(5)?.parse()?),
            )
            .await
        }
        "reconcile" => reconcile(arg(1)?, arg(2)?, arg(3)?.parse()?).await,
        other => Err(format!("unknown mode {other}").into()),
    }
}

/// Opens accounts 1..=n with a platform top-up each (TopUp opens an account).
async fn setup(addr: &str, token: &str, accounts: usize, credits: i64) -> Result<()> {
    let mut client = CreditServiceClient::new(connect(addr).await?);
    let run = uuid::Uuid::now_v7();
    for n in 1..=accounts {
        client
            .top_up(request(
                TopUpRequest {
                    tenant_id: account(n),
                    amount: credits,
                    idempotency_key: format!("bench-setup-{run}-{n}"),
                    reference: "bench".into(),
                },
                token,
            )?)
            .await?;
    }
    println!("accounts={accounts} credits={credits}");
    Ok(())
}

/// `conc` connections, each with one Consume in flight, for `secs`.
async fn consume(
    addr: &str,
    token: &str,
    accounts: usize,
    conc: usize,
    secs: Duration,
) -> Result<()> {
    let run = uuid::Uuid::now_v7();
    let mut clients = Vec::with_capacity(conc);
    for _ in 0..conc {
        clients.push(CreditServiceClient::new(connect(addr).await?));
    }
    let start = Instant::now();
    let until = start + secs;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, mut client)| {
            let token = token.to_owned();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                let mut i = c;
                while Instant::now() < until {
                    let message = ConsumeRequest {
                        tenant_id: account(1 + i % accounts),
                        amount: 1,
                        idempotency_key: format!("b-{run}-{c}-{i}"),
                        reference: String::new(),
                    };
                    i += conc;
                    let Ok(req) = request(message, &token) else {
                        failed += 1;
                        continue;
                    };
                    match client.consume(req).await {
                        Ok(_) => ok += 1,
                        Err(status) => {
                            if failed == 0 {
                                eprintln!("billing_bench: first failure: {status:?}");
                            }
                            failed += 1;
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        let (o, f) = task.await?;
        ok += o;
        failed += f;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "ok={ok} failed={failed} seconds={elapsed:.2} rps={:.1}",
        ok as f64 / elapsed
    );
    Ok(())
}

/// Reconciles accounts 1..=n one by one (other accounts of the database are
/// not the benchmark's) and prints what they add up to.
async fn reconcile(addr: &str, token: &str, accounts: usize) -> Result<()> {
    let mut client = CreditServiceClient::new(connect(addr).await?);
    let (mut checked, mut drift) = (0, 0);
    for n in 1..=accounts {
        let reply = client
            .reconcile(request(
                ReconcileRequest {
                    tenant_id: account(n),
                },
                token,
            )?)
            .await?
            .into_inner();
        checked += reply.accounts_checked;
        drift += reply.drift_total;
    }
    println!("accounts_checked={checked} drift_total={drift}");
    Ok(())
}

//! The bank test: 16 clients for several seconds against three accounts, a
//! random mix of consume, reserve, capture, release, refund and top-up, a
//! fifth of the calls sent twice at once with the same key and a tenth
//! retried afterwards. During the run and after it: no balance or available
//! amount below zero, balance == sum of the ledger (Reconcile), each key one
//! effect, every acknowledged operation in the ledger exactly once, and the
//! sum over the accounts equal to top-ups minus net charges.
//!
//! The same run with Consume replaced by a read-then-write variant (SQL sent
//! as the billing role by the test itself, never by the product) must break
//! those checks: that is what proves they can fail.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mosaic_proto::billing::{
    CaptureRequest, EntryKind, LedgerEntry, RefundRequest, ReleaseRequest, ReserveRequest,
    TopUpRequest,
};
use sqlx::PgConnection;
use tonic::Status;
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::billing_support::{BillingTenant, billing_role_db, credits, key};
use crate::harness::authed;

const CLIENTS: usize = 16;
const ACCOUNTS: usize = 3;
const RUN: Duration = Duration::from_secs(6);
const INITIAL: i64 = 5000;

/// How a client consumes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Consumer {
    /// The product: CreditService/Consume.
    Service,
    /// A read-then-write consume in the test: read the balance, then write
    /// the balance computed from that read (and its ledger entry).
    ReadThenWrite,
}

/// One acknowledged operation.
#[derive(Debug, Clone)]
struct Acked {
    account: usize,
    key: Option<String>,
    entry_id: String,
    kind: EntryKind,
    amount: i64,
    held_change: i64,
}

#[derive(Debug, Default)]
struct Books {
    acked: Vec<Acked>,
    /// Pending holds per account: (hold id, amount).
    holds: Vec<Vec<(String, i64)>>,
    /// Consumption and capture entries per account, for refunds.
    charges: Vec<Vec<String>>,
    problems: Vec<String>,
}

/// A tiny xorshift: the mix differs per client and run, no dependency.
struct Dice(u64);

impl Dice {
    fn new() -> Self {
        Self(Uuid::new_v4().as_u64_pair().0 | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// In `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
}

fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

/// Sends `call` once, or (by the dice) twice at once, or twice in a row;
/// every answer of a retried call must be the first one.
async fn send<T, F, Fut>(dice: &mut Dice, books: &Mutex<Books>, call: F) -> Result<T, Status>
where
    T: PartialEq + std::fmt::Debug,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let roll = dice.next() % 100;
    let answers = if roll < 20 {
        let (a, b) = tokio::join!(call(), call());
        vec![a, b]
    } else if roll < 30 {
        let a = call().await;
        let b = call().await;
        vec![a, b]
    } else {
        vec![call().await]
    };
    let mut answers = answers.into_iter();
    let first = answers.next().expect("one answer");
    for other in answers {
        let same = match (&first, &other) {
            (Ok(a), Ok(b)) => a == b,
            (Err(a), Err(b)) => a.code() == b.code() && reason(a) == reason(b),
            _ => false,
        };
        if !same {
            books.lock().unwrap().problems.push(format!(
                "a retry answered {other:?}, the first call {first:?}"
            ));
        }
    }
    first
}

/// Records a refusal: the expected ones are fine, anything else is a problem.
fn refused(books: &Mutex<Books>, what: &str, status: &Status, expected: &[&str]) {
    if !expected.contains(&reason(status).as_str()) {
        books
            .lock()
            .unwrap()
            .problems
            .push(format!("{what} failed: {status:?}"));
    }
}

fn ack(books: &Mutex<Books>, account: usize, entry: &LedgerEntry) {
    let mut books = books.lock().unwrap();
    let kind = entry.kind();
    if matches!(kind, EntryKind::Consumption | EntryKind::Capture) {
        books.charges[account].push(entry.entry_id.clone());
    }
    books.acked.push(Acked {
        account,
        key: (!entry.idempotency_key.is_empty()).then(|| entry.idempotency_key.clone()),
        entry_id: entry.entry_id.clone(),
        kind,
        amount: entry.amount,
        held_change: entry.held_change,
    });
}

/// The read-then-write consume: the lost-update bug the product avoids.
async fn consume_read_then_write(
    conn: &mut PgConnection,
    t: &BillingTenant,
    amount: i64,
    key: &str,
) -> Result<Option<LedgerEntry>, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query(&format!("SET LOCAL mosaic.tenant_id = '{}'", t.id()))
        .execute(&mut *tx)
        .await?;
    let (balance, held): (i64, i64) =
        sqlx::query_as("SELECT balance, held FROM accounts WHERE tenant_id = $1")
            .bind(t.id())
            .fetch_one(&mut *tx)
            .await?;
    if balance - held < amount {
        return Ok(None);
    }
    let (balance, held, seq): (i64, i64, i64) = sqlx::query_as(
        "UPDATE accounts SET balance = $2, entries = entries + 1 WHERE tenant_id = $1 \
         RETURNING balance, held, entries",
    )
    .bind(t.id())
    .bind(balance - amount)
    .fetch_one(&mut *tx)
    .await?;
    let entry_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO ledger_entries (tenant_id, seq, entry_id, kind, amount, balance_after, \
         held_after, idempotency_key, actor, request_id) \
         VALUES ($1, $2, $3, 'consumption', $4, $5, $6, $7, 'test:read-then-write', '')",
    )
    .bind(t.id())
    .bind(seq)
    .bind(entry_id)
    .bind(-amount)
    .bind(balance)
    .bind(held)
    .bind(key)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(LedgerEntry {
        entry_id: entry_id.to_string(),
        kind: EntryKind::Consumption as i32,
        amount: -amount,
        idempotency_key: key.to_owned(),
        ..Default::default()
    }))
}

/// One client's loop until `until`.
async fn client(
    accounts: Arc<Vec<BillingTenant>>,
    books: Arc<Mutex<Books>>,
    consumer: Consumer,
    until: Instant,
) {
    let mut dice = Dice::new();
    let mut conn = match consumer {
        Consumer::ReadThenWrite => Some(billing_role_db().await),
        Consumer::Service => None,
    };
    while Instant::now() < until {
        let a = dice.next() as usize % ACCOUNTS;
        let t = &accounts[a];
        let op = dice.next() % 100;
        if op < 35 {
            let amount = dice.range(1, 40);
            let key = key();
            match (consumer, conn.as_mut()) {
                (Consumer::ReadThenWrite, Some(conn)) => {
                    // Short credits, or the database's own CHECK refused it: no entry.
                    if let Ok(Some(entry)) = consume_read_then_write(conn, t, amount, &key).await {
                        ack(&books, a, &entry);
                    }
                }
                _ => match send(&mut dice, &books, || t.consume(amount, &key)).await {
                    Ok(entry) => ack(&books, a, &entry),
                    Err(e) => refused(&books, "consume", &e, &["INSUFFICIENT_CREDITS"]),
                },
            }
        } else if op < 55 {
            let amount = dice.range(1, 60);
            let key = key();
            let request = ReserveRequest {
                amount,
                idempotency_key: key.clone(),
                ..Default::default()
            };
            let reserve = || {
                let (request, token) = (request.clone(), t.member.clone());
                async move {
                    credits()
                        .reserve(authed(request, &token))
                        .await
                        .map(tonic::Response::into_inner)
                }
            };
            match send(&mut dice, &books, reserve).await {
                Ok(hold) => {
                    let mut b = books.lock().unwrap();
                    b.holds[a].push((hold.hold_id.clone(), amount));
                    b.acked.push(Acked {
                        account: a,
                        key: Some(key),
                        entry_id: format!("hold:{}", hold.hold_id),
                        kind: EntryKind::Hold,
                        amount: 0,
                        held_change: amount,
                    });
                }
                Err(e) => refused(&books, "reserve", &e, &["INSUFFICIENT_CREDITS"]),
            }
        } else if op < 80 {
            let hold = {
                let mut b = books.lock().unwrap();
                let pending = &mut b.holds[a];
                if pending.is_empty() {
                    None
                } else {
                    let at = dice.next() as usize % pending.len();
                    Some(pending.swap_remove(at))
                }
            };
            let Some((hold_id, reserved)) = hold else {
                continue;
            };
            if op < 70 {
                let request = CaptureRequest {
                    hold_id,
                    amount: dice.range(1, reserved),
                    idempotency_key: key(),
                    ..Default::default()
                };
                let capture = || {
                    let (request, token) = (request.clone(), t.member.clone());
                    async move {
                        credits()
                            .capture(authed(request, &token))
                            .await
                            .map(tonic::Response::into_inner)
                    }
                };
                match send(&mut dice, &books, capture).await {
                    Ok(entry) => ack(&books, a, &entry),
                    Err(e) => refused(&books, "capture", &e, &[]),
                }
            } else {
                let request = ReleaseRequest {
                    hold_id,
                    ..Default::default()
                };
                let release = || {
                    let (request, token) = (request.clone(), t.member.clone());
                    async move {
                        credits()
                            .release(authed(request, &token))
                            .await
                            .map(tonic::Response::into_inner)
                    }
                };
                match send(&mut dice, &books, release).await {
                    Ok(entry) => ack(&books, a, &entry),
                    Err(e) => refused(&books, "release", &e, &[]),
                }
            }
        } else if op < 90 {
            let charge = {
                let b = books.lock().unwrap();
                let charges = &b.charges[a];
                (!charges.is_empty()).then(|| charges[dice.next() as usize % charges.len()].clone())
            };
            let Some(entry_id) = charge else { continue };
            let request = RefundRequest {
                tenant_id: t.id().to_string(),
                entry_id,
                amount: dice.range(1, 5),
                idempotency_key: key(),
                reference: String::new(),
            };
            let refund = || {
                let (request, token) = (request.clone(), t.platform.clone());
                async move {
                    credits()
                        .refund(authed(request, &token))
                        .await
                        .map(tonic::Response::into_inner)
                }
            };
            match send(&mut dice, &books, refund).await {
                Ok(entry) => ack(&books, a, &entry),
                Err(e) => refused(&books, "refund", &e, &["REFUND_EXCEEDS_CHARGE"]),
            }
        } else {
            let request = TopUpRequest {
                tenant_id: t.id().to_string(),
                amount: dice.range(50, 300),
                idempotency_key: key(),
                reference: String::new(),
            };
            let top_up = || {
                let (request, token) = (request.clone(), t.platform.clone());
                async move {
                    credits()
                        .top_up(authed(request, &token))
                        .await
                        .map(tonic::Response::into_inner)
                }
            };
            match send(&mut dice, &books, top_up).await {
                Ok(entry) => ack(&books, a, &entry),
                Err(e) => refused(&books, "top-up", &e, &[]),
            }
        }
    }
}

/// What every read checks: nothing below zero, no drift.
async fn check_now(accounts: &[BillingTenant], problems: &mut Vec<String>) {
    for (index, t) in accounts.iter().enumerate() {
        let account = t.account().await;
        if account.balance < 0 || account.available < 0 || account.held < 0 {
            problems.push(format!("account {index} below zero: {account:?}"));
        }
        let reconciled = t.reconcile().await;
        if reconciled.drift_total != 0 {
            problems.push(format!("account {index} drifted: {:?}", reconciled.drifted));
        }
    }
}

/// Runs the bank against fresh accounts; returns every broken invariant.
async fn run_bank(consumer: Consumer) -> Vec<String> {
    let mut accounts = Vec::new();
    for _ in 0..ACCOUNTS {
        accounts.push(BillingTenant::new(INITIAL).await);
    }
    let accounts = Arc::new(accounts);
    let books = Arc::new(Mutex::new(Books {
        holds: vec![Vec::new(); ACCOUNTS],
        charges: vec![Vec::new(); ACCOUNTS],
        ..Books::default()
    }));
    let until = Instant::now() + RUN;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(accounts.clone(), books.clone(), consumer, until)))
        .collect();
    // Reads during the run.
    let mut during = Vec::new();
    let mut reads = 0;
    while Instant::now() < until {
        check_now(&accounts, &mut during).await;
        reads += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in clients {
        c.await.expect("client");
    }
    assert!(
        reads > 5,
        "the checker read during the run ({reads} rounds)"
    );

    let mut books = Arc::try_unwrap(books)
        .expect("clients done")
        .into_inner()
        .unwrap();
    let mut problems = std::mem::take(&mut books.problems);
    problems.extend(during);
    check_now(&accounts, &mut problems).await;

    let mut total = 0;
    for (index, t) in accounts.iter().enumerate() {
        let account = t.account().await;
        total += account.balance;
        let ledger = t.ledger().await;
        let (sum, held) = ledger
            .iter()
            .fold((0, 0), |(s, h), e| (s + e.amount, h + e.held_change));
        if (sum, held) != (account.balance, account.held) {
            problems.push(format!(
                "account {index}: balance {} held {}, the ledger says {sum} and {held}",
                account.balance, account.held
            ));
        }
        // Each key one effect; every acknowledged operation in the ledger once.
        let mut by_key: HashMap<&str, usize> = HashMap::new();
        let mut by_id: HashMap<String, usize> = HashMap::new();
        for e in &ledger {
            if !e.idempotency_key.is_empty() {
                *by_key.entry(e.idempotency_key.as_str()).or_default() += 1;
            }
            *by_id.entry(e.entry_id.clone()).or_default() += 1;
            if e.kind() == EntryKind::Hold {
                *by_id.entry(format!("hold:{}", e.hold_id)).or_default() += 1;
            }
        }
        if let Some((key, n)) = by_key.iter().find(|(_, n)| **n != 1) {
            problems.push(format!("account {index}: key {key} has {n} entries"));
        }
        let acked: Vec<&Acked> = books
            .acked
            .iter()
            .filter(|op| op.account == index)
            .collect();
        let acked_keys: HashSet<&str> = acked.iter().filter_map(|op| op.key.as_deref()).collect();
        // The first top-up was made by BillingTenant::new.
        let extra: Vec<&&str> = by_key
            .keys()
            .filter(|k| !acked_keys.contains(**k))
            .collect();
        if extra.len() != 1 {
            problems.push(format!(
                "account {index}: entries of keys never acknowledged: {extra:?}"
            ));
        }
        for op in &acked {
            let found = by_id.get(&op.entry_id).copied().unwrap_or_default();
            if found != 1 {
                problems.push(format!(
                    "account {index}: acknowledged {op:?} is in the ledger {found} times"
                ));
            }
            if let Some(e) = ledger.iter().find(|e| e.entry_id == op.entry_id)
                && (e.kind() != op.kind || e.amount != op.amount || e.held_change != op.held_change)
            {
                problems.push(format!(
                    "account {index}: acknowledged {op:?} but the ledger has {e:?}"
                ));
            }
        }
    }
    // The sum over the accounts: what came in minus what was charged.
    let net: i64 = books
        .acked
        .iter()
        .filter(|op| op.kind != EntryKind::Hold)
        .map(|op| op.amount)
        .sum();
    let expected = INITIAL * ACCOUNTS as i64 + net;
    if total != expected {
        problems.push(format!(
            "the accounts hold {total}, top-ups minus net charges are {expected}"
        ));
    }
    let ops = books.acked.len();
    assert!(
        ops > 200,
        "the bank did too little to prove anything: {ops} operations"
    );
    eprintln!(
        "bank ({consumer:?}): {ops} acknowledged operations, {} problems",
        problems.len()
    );
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn billing_bank_keeps_the_books_exact_under_concurrency_and_retries() {
    let problems = run_bank(Consumer::Service).await;
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn billing_bank_catches_a_read_then_write_consume() {
    let problems = run_bank(Consumer::ReadThenWrite).await;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("drifted") || p.contains("the ledger says")),
        "the read-then-write consume lost no update: {problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("top-ups minus net charges")),
        "{problems:?}"
    );
}

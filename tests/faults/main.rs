//! The fault scorecard: the real `mosaic serve` binary against dependencies
//! of the card's own (a PostgreSQL from `initdb`, `redis-server`s, a
//! MongoDB-wire server, all on free ports, all stopped when the card ends or
//! panics), with faults injected in user space (process crash and restart,
//! SIGSTOP, an in-process TCP proxy), load from the generated clients with
//! every call logged, and one card row per fault: the figure measured, the
//! bar, PASS or FAIL. Rows are numbered as in issue 11.
//!
//! ```sh
//! cargo test --test faults                  # the fast subset (what CI runs)
//! cargo test --test faults -- --all         # the whole card, full durations
//! cargo test --test faults -- --all 3 7     # rows whose id or name matches
//! ```
//!
//! Layout: [`deps`] (the card's own PostgreSQL, Redis, MongoDB; the child's
//! settings), [`postgres`], [`proxy`], [`server`] (the child process, its
//! logs, tokens), [`load`] (the load client and its call log), [`card`] (rows
//! and printing), and one module per fault under `rows`. Each call log is
//! written to `target/tmp/faults/<row>.tsv`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Instant;

mod card;
mod deps;
mod load;
#[path = "../support/own_mongo.rs"]
mod own_mongo;
#[path = "../support/ports.rs"]
mod ports;
mod postgres;
mod proxy;
#[path = "../../shared/cache/tests/support/mod.rs"]
mod redis_support;
mod server;
mod rows {
    pub(crate) mod malformed;
    pub(crate) mod noisy;
    pub(crate) mod postgres_faults;
    pub(crate) mod redis_outage;
    pub(crate) mod sigterm;
}

use card::Row;
use deps::Deps;

/// How long a row runs: the CI subset is short, the whole card takes the
/// issue's durations.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Profile {
    pub(crate) full: bool,
}

impl Profile {
    /// `fast` seconds in the CI subset, `full` in the whole card.
    pub(crate) fn secs(&self, fast: f64, full: f64) -> std::time::Duration {
        std::time::Duration::from_secs_f64(if self.full { full } else { fast })
    }
}

type RowFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Vec<Row>>> + 'a>>;

struct Entry {
    id: &'static str,
    name: &'static str,
    /// In the CI subset.
    fast: bool,
    run: for<'a> fn(&'a Deps, Profile) -> RowFuture<'a>,
}

const ENTRIES: &[Entry] = &[
    Entry {
        id: "3",
        name: "redis refused and hung",
        fast: true,
        run: |deps, p| Box::pin(rows::redis_outage::run(deps, p)),
    },
    Entry {
        id: "7",
        name: "sigterm under load with open tails",
        fast: true,
        run: |deps, p| Box::pin(rows::sigterm::run(deps, p)),
    },
    Entry {
        id: "1",
        name: "postgres crash (-m immediate) under load",
        fast: true,
        run: |deps, p| Box::pin(rows::postgres_faults::crash(deps, p)),
    },
    Entry {
        id: "2",
        name: "postgres hang (SIGSTOP)",
        fast: false,
        run: |deps, p| Box::pin(rows::postgres_faults::hang(deps, p)),
    },
    Entry {
        id: "8",
        name: "noisy neighbour",
        fast: false,
        run: |deps, p| Box::pin(rows::noisy::run(deps, p)),
    },
    Entry {
        id: "9",
        name: "malformed bytes",
        fast: true,
        run: |deps, p| Box::pin(rows::malformed::run(deps, p)),
    },
];

fn main() -> ExitCode {
    let mut full = false;
    let mut list = false;
    let mut filters = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--all" => full = true,
            "--list" => list = true,
            // libtest options that take a value (cargo test passes them to every test binary).
            "--test-threads" | "--color" | "--format" | "--skip" | "-Z" | "--logfile" => {
                let _ = args.next();
            }
            flag if flag.starts_with('-') => {}
            filter => filters.push(filter.to_owned()),
        }
    }
    let selected: Vec<&Entry> = ENTRIES
        .iter()
        .filter(|e| full || e.fast)
        .filter(|e| {
            filters.is_empty()
                || filters
                    .iter()
                    .any(|f| f == e.id || e.name.contains(f.as_str()) || f == "faults")
        })
        .collect();
    if list {
        for e in &selected {
            println!("row {}: {}: test", e.id, e.name);
        }
        return ExitCode::SUCCESS;
    }
    if selected.is_empty() {
        println!("faults: no row matches {filters:?}");
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let rows = runtime.block_on(async {
        let deps = match Deps::start().await {
            Ok(deps) => deps,
            Err(e) => return vec![Row::broken("-", "the card's own dependencies", &e)],
        };
        let profile = Profile { full };
        let mut rows = Vec::new();
        for entry in selected {
            let row_started = Instant::now();
            eprintln!("faults: row {} ({}) ...", entry.id, entry.name);
            let got = match (entry.run)(&deps, profile).await {
                Ok(got) => got,
                Err(e) => vec![Row::broken(entry.id, entry.name, &e)],
            };
            for row in &got {
                eprintln!(
                    "faults: {} {} {}: {}",
                    if row.pass { "PASS" } else { "FAIL" },
                    row.id,
                    row.fault,
                    row.figure
                );
            }
            eprintln!(
                "faults: row {} took {:.1} s",
                entry.id,
                row_started.elapsed().as_secs_f64()
            );
            rows.extend(got);
        }
        rows
    });
    // The runtime's tasks (proxies, log readers) end with it.
    drop(runtime);
    print!("{}", card::render(&rows));
    println!(
        "({} card, {:.0} s)",
        if full { "whole" } else { "CI subset of the" },
        started.elapsed().as_secs_f64()
    );
    if rows.iter().all(|r| r.pass) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

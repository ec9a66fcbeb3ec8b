//! The load client: many concurrent tasks over the generated clients, every
//! call logged (when it started and how long it took, the method, the key it
//! wrote or read, the code it got), so a row can compute rates and
//! percentiles per window and check acknowledged writes against the stores.

use std::future::Future;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::{Code, Status};

/// One call as the client saw it.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) start: Instant,
    pub(crate) took: Duration,
    pub(crate) method: &'static str,
    pub(crate) key: String,
    pub(crate) code: Code,
    /// `ErrorInfo.reason` or the message of a failure, for the log.
    pub(crate) detail: String,
}

impl Call {
    pub(crate) fn end(&self) -> Instant {
        self.start + self.took
    }
}

/// What one operation returns: method, key, outcome.
pub(crate) type Outcome = (&'static str, String, Result<(), Status>);

#[derive(Debug)]
pub(crate) struct CallLog {
    pub(crate) t0: Instant,
    calls: Mutex<Vec<Call>>,
}

impl CallLog {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            t0: Instant::now(),
            calls: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn record(&self, start: Instant, (method, key, result): Outcome) {
        let (code, detail) = match result {
            Ok(()) => (Code::Ok, String::new()),
            Err(status) => {
                let reason = tonic_types::StatusExt::get_error_details(&status)
                    .error_info()
                    .map(|info| info.reason.clone())
                    .unwrap_or_else(|| status.message().to_owned());
                (status.code(), reason)
            }
        };
        self.calls.lock().expect("calls").push(Call {
            start,
            took: start.elapsed(),
            method,
            key,
            code,
            detail,
        });
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    /// Writes every call as `ms since start, took µs, method, key, code, detail`
    /// to `target/tmp/faults/<name>.tsv`; returns the path.
    pub(crate) fn save(&self, name: &str) -> String {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{name}.tsv"));
        if let Ok(mut file) = std::fs::File::create(&path) {
            let mut out = std::io::BufWriter::new(&mut file);
            let _ = writeln!(out, "ms\ttook_us\tmethod\tkey\tcode\tdetail");
            for c in self.calls() {
                let _ = writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{:?}\t{}",
                    c.start.duration_since(self.t0).as_millis(),
                    c.took.as_micros(),
                    c.method,
                    c.key,
                    c.code,
                    c.detail.replace(['\t', '\n'], " ")
                );
            }
        }
        path.display().to_string()
    }
}

/// Runs `op(worker, n)` in `workers` tasks until `stop` is set, each call
/// timed and logged; `pace` (if any) is the least time between one worker's
/// calls.
pub(crate) fn spawn<F, Fut>(
    log: &Arc<CallLog>,
    workers: usize,
    pace: Option<Duration>,
    stop: &Arc<std::sync::atomic::AtomicBool>,
    op: F,
) -> Vec<tokio::task::JoinHandle<()>>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    (0..workers)
        .map(|worker| {
            let op = op.clone();
            let log = log.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                let mut next = Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Some(pace) = pace {
                        tokio::time::sleep_until(next.into()).await;
                        next += pace;
                    }
                    let start = Instant::now();
                    let outcome = op(worker, n).await;
                    log.record(start, outcome);
                    n += 1;
                }
            })
        })
        .collect()
}

/// Stops the workers and waits for their last calls.
pub(crate) async fn stop(
    stop: &Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
) {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
}

/// Figures of the calls that started in one window.
#[derive(Debug, Clone, Default)]
pub(crate) struct Window {
    pub(crate) calls: usize,
    pub(crate) ok: usize,
    pub(crate) secs: f64,
    pub(crate) p99: Duration,
    /// Failed calls by code.
    pub(crate) failures: Vec<(Code, usize)>,
}

impl Window {
    pub(crate) fn of<'a>(
        calls: impl IntoIterator<Item = &'a Call>,
        from: Instant,
        to: Instant,
    ) -> Self {
        let picked: Vec<&Call> = calls
            .into_iter()
            .filter(|c| c.start >= from && c.start < to)
            .collect();
        let mut took: Vec<Duration> = picked.iter().map(|c| c.took).collect();
        took.sort();
        let at = |q: f64| {
            if took.is_empty() {
                Duration::ZERO
            } else {
                took[((took.len() as f64 - 1.0) * q).round() as usize]
            }
        };
        let mut failures: Vec<(Code, usize)> = Vec::new();
        for c in picked.iter().filter(|c| c.code != Code::Ok) {
            match failures.iter_mut().find(|(code, _)| *code == c.code) {
                Some((_, n)) => *n += 1,
                None => failures.push((c.code, 1)),
            }
        }
        Self {
            calls: picked.len(),
            ok: picked.iter().filter(|c| c.code == Code::Ok).count(),
            secs: to.duration_since(from).as_secs_f64(),
            p99: at(0.99),
            failures,
        }
    }

    pub(crate) fn rate(&self) -> f64 {
        self.ok as f64 / self.secs.max(1e-9)
    }

    pub(crate) fn success(&self) -> f64 {
        if self.calls == 0 {
            return 0.0;
        }
        self.ok as f64 / self.calls as f64
    }

    pub(crate) fn failed(&self) -> usize {
        self.calls - self.ok
    }

    pub(crate) fn failure_text(&self) -> String {
        if self.failures.is_empty() {
            return "none".into();
        }
        self.failures
            .iter()
            .map(|(code, n)| format!("{code:?}×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

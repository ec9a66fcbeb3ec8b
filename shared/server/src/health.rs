//! [`Health`]: the `grpc.health.v1` service, driven by [`Probe`]s.
//!
//! A server's services come in [`HealthGroup`]s, one per Mosaic service
//! (identity's five gRPC services with identity's database probe, ...).
//! Every `probe_interval` all probes run (each bounded by [`PROBE_TIMEOUT`]);
//! a group's services are SERVING when its probes pass and NOT_SERVING
//! otherwise, so a MongoDB outage takes conversations out while identity and
//! crm in the same process stay SERVING. The whole server (`""`) is SERVING
//! when every group is; Kubernetes' gRPC readiness probe asks for `""`.
//! From the shutdown signal on, everything stays NOT_SERVING so load
//! balancers stop routing here while calls drain.
//!
//! [`LIVENESS`] is SERVING for as long as the process answers, whatever the
//! probes say: Kubernetes' liveness probe asks for it, so that a database
//! outage takes pods out of rotation without restarting every one of them.
//!
//! The same state is the gauge `mosaic_health_serving{grpc_service}` (1
//! SERVING, 0 NOT_SERVING), which the `MosaicNotServing` alert reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::FutureExt;
use mosaic_core::{LogEvery, Metrics, Probe};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// How long one probe may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The health service name that only says the process is alive.
pub const LIVENESS: &str = "liveness";

/// Some gRPC services and the probes their health follows.
#[derive(Clone)]
pub struct HealthGroup {
    /// Fully qualified gRPC service names, e.g. `mosaic.crm.v1.CompanyService`.
    pub services: Vec<String>,
    pub probes: Vec<Arc<dyn Probe>>,
}

impl std::fmt::Debug for HealthGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthGroup")
            .field("services", &self.services)
            .field(
                "probes",
                &self.probes.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl HealthGroup {
    pub fn new(services: &[&str], probes: Vec<Arc<dyn Probe>>) -> Self {
        Self {
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            probes,
        }
    }
}

/// The health of this server. Clones share state.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    groups: Arc<[HealthGroup]>,
    /// Whether group `i` is SERVING, for the metrics.
    serving: Arc<[AtomicBool]>,
    /// `true` once shutdown began; guards status writes so a probe round
    /// finishing late cannot flip a draining server back to SERVING.
    shut_down: Arc<Mutex<bool>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

impl Health {
    /// Health for the services of `groups` and the whole server. Everything
    /// starts NOT_SERVING until the first probe round passes.
    pub fn new(groups: Vec<HealthGroup>) -> Self {
        let reporter = HealthReporter::new();
        let names = std::iter::once("").chain(
            groups
                .iter()
                .flat_map(|g| g.services.iter().map(String::as_str)),
        );
        for name in names {
            // The reporter's lock is uncontended while nobody else holds a
            // clone, so this completes on its first poll.
            let _ = reporter
                .set_service_status(name, ServingStatus::NotServing)
                .now_or_never();
        }
        let _ = reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .now_or_never();
        Self {
            reporter,
            serving: groups.iter().map(|_| AtomicBool::new(false)).collect(),
            groups: groups.into(),
            shut_down: Arc::new(Mutex::new(false)),
        }
    }

    /// Registers `mosaic_health_serving{grpc_service}` for every listed
    /// service, sampled at scrape time.
    pub fn register_metrics(&self, metrics: &Metrics) -> Result<(), prometheus::Error> {
        for (index, group) in self.groups.iter().enumerate() {
            for name in &group.services {
                let serving = self.serving.clone();
                metrics.register_gauge_fn(
                    "mosaic_health_serving",
                    "1 while the gRPC service's health is SERVING, 0 while NOT_SERVING.",
                    &[("grpc_service", name)],
                    Arc::new(move || f64::from(u8::from(serving[index].load(Ordering::Relaxed)))),
                )?;
            }
        }
        Ok(())
    }

    /// Every listed service name (without `""` and [`LIVENESS`]).
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.groups
            .iter()
            .flat_map(|g| g.services.iter().map(String::as_str))
    }

    /// The `grpc.health.v1.Health` service to mount.
    pub fn service(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService::from_health_reporter(self.reporter.clone()))
    }

    /// Sets each group's services to SERVING or NOT_SERVING (`serving[i]`
    /// for group `i`), and `""` to SERVING when all are; ignored once
    /// shutdown began.
    pub async fn set_serving(&self, serving: &[bool]) {
        let shut_down = self.shut_down.lock().await;
        if *shut_down {
            return;
        }
        for ((group, ok), flag) in self.groups.iter().zip(serving).zip(self.serving.iter()) {
            flag.store(*ok, Ordering::Relaxed);
            for name in &group.services {
                self.reporter.set_service_status(name, status(*ok)).await;
            }
        }
        let all = serving.iter().all(|ok| *ok);
        self.reporter.set_service_status("", status(all)).await;
    }

    /// Sets everything to NOT_SERVING for good.
    pub async fn shut_down(&self) {
        let mut shut_down = self.shut_down.lock().await;
        *shut_down = true;
        for flag in self.serving.iter() {
            flag.store(false, Ordering::Relaxed);
        }
        self.reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        for name in self.services() {
            self.reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    }

    /// Runs every group's probes every `interval`, starting now, until `stop` fires.
    pub async fn run_probes(self, interval: Duration, stop: CancellationToken) {
        let mut last: Option<Vec<bool>> = None;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let round = futures::future::join_all(self.groups.iter().map(|g| check_all(&g.probes)));
            let serving = tokio::select! {
                () = stop.cancelled() => return,
                serving = round => serving,
            };
            for (index, (group, ok)) in self.groups.iter().zip(&serving).enumerate() {
                if last.as_ref().and_then(|l| l.get(index)) != Some(ok) {
                    tracing::info!(services = ?group.services, serving = *ok, "health changed");
                }
            }
            last = Some(serving.clone());
            self.set_serving(&serving).await;
        }
    }
}

fn status(serving: bool) -> ServingStatus {
    if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// A failing probe is asked again every probe interval for as long as its
/// dependency is down; its cause is logged once per 10 s with a count
/// (`suppressed`), and each change of health once (`health changed`).
static PROBE_FAILED: LogEvery = LogEvery::new(Duration::from_secs(10));
static PROBE_TIMED_OUT: LogEvery = LogEvery::new(Duration::from_secs(10));

/// Runs all probes at once; `true` when every one passes in time.
async fn check_all(probes: &[Arc<dyn Probe>]) -> bool {
    let results = futures::future::join_all(probes.iter().map(|p| async move {
        match tokio::time::timeout(PROBE_TIMEOUT, p.check()).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                PROBE_FAILED.log(|suppressed| {
                    tracing::warn!(probe = p.name(), %error, suppressed, "health probe failed");
                });
                false
            }
            Err(_) => {
                PROBE_TIMED_OUT.log(|suppressed| {
                    tracing::warn!(
                        probe = p.name(),
                        timeout_ms = PROBE_TIMEOUT.as_millis() as u64,
                        suppressed,
                        "health probe timed out"
                    );
                });
                false
            }
        }
    }))
    .await;
    results.into_iter().all(|ok| ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosaic_core::ProbeFuture;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    use tonic_health::pb::health_server::Health as _;

    struct Flag(Arc<AtomicBool>);

    impl Probe for Flag {
        fn name(&self) -> &str {
            "flag"
        }
        fn check(&self) -> ProbeFuture<'_> {
            let ok = self.0.load(Ordering::SeqCst);
            Box::pin(async move { if ok { Ok(()) } else { Err("flag down".into()) } })
        }
    }

    struct Hangs;

    impl Probe for Hangs {
        fn name(&self) -> &str {
            "hangs"
        }
        fn check(&self) -> ProbeFuture<'_> {
            Box::pin(std::future::pending())
        }
    }

    async fn status(health: &Health, service: &str) -> Wire {
        let svc = HealthService::from_health_reporter(health.reporter.clone());
        let resp = svc
            .check(tonic::Request::new(HealthCheckRequest {
                service: service.to_owned(),
            }))
            .await
            .expect("registered");
        resp.into_inner().status()
    }

    fn one(service: &str) -> Health {
        Health::new(vec![HealthGroup::new(&[service], Vec::new())])
    }

    #[tokio::test]
    async fn groups_follow_their_own_probes() {
        let health = Health::new(vec![
            HealthGroup::new(&["a.v1.A", "a.v1.B"], Vec::new()),
            HealthGroup::new(&["c.v1.C"], Vec::new()),
        ]);
        health.set_serving(&[true, false]).await;
        assert_eq!(status(&health, "a.v1.A").await, Wire::Serving);
        assert_eq!(status(&health, "a.v1.B").await, Wire::Serving);
        assert_eq!(status(&health, "c.v1.C").await, Wire::NotServing);
        assert_eq!(
            status(&health, "").await,
            Wire::NotServing,
            "not all groups serve"
        );
        health.set_serving(&[true, true]).await;
        assert_eq!(status(&health, "").await, Wire::Serving);
    }

    #[tokio::test]
    async fn the_gauge_follows_each_group_and_shutdown() {
        let health = Health::new(vec![
            HealthGroup::new(&["a.v1.A"], Vec::new()),
            HealthGroup::new(&["c.v1.C"], Vec::new()),
        ]);
        let metrics = Metrics::new();
        health.register_metrics(&metrics).expect("register");
        let gauge = |metrics: &Metrics, service: &str| {
            let text = metrics.render().expect("render");
            let prefix = format!("mosaic_health_serving{{grpc_service=\"{service}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
                .unwrap_or_else(|| panic!("no {prefix} in {text}"))
        };
        assert_eq!(gauge(&metrics, "a.v1.A"), "0", "starts NOT_SERVING");
        health.set_serving(&[true, false]).await;
        assert_eq!(gauge(&metrics, "a.v1.A"), "1");
        assert_eq!(gauge(&metrics, "c.v1.C"), "0");
        health.shut_down().await;
        health.set_serving(&[true, true]).await;
        assert_eq!(gauge(&metrics, "a.v1.A"), "0", "shutdown sticks");
    }

    #[tokio::test]
    async fn starts_not_serving_and_follows_probes() {
        let health = one("a.v1.A");
        assert_eq!(status(&health, "").await, Wire::NotServing);
        assert_eq!(status(&health, "a.v1.A").await, Wire::NotServing);

        let flag = Arc::new(AtomicBool::new(true));
        assert!(check_all(&[Arc::new(Flag(flag.clone())) as Arc<dyn Probe>]).await);
        flag.store(false, Ordering::SeqCst);
        assert!(!check_all(&[Arc::new(Flag(flag.clone())) as Arc<dyn Probe>]).await);

        health.set_serving(&[true]).await;
        assert_eq!(status(&health, "").await, Wire::Serving);
        assert_eq!(status(&health, "a.v1.A").await, Wire::Serving);
    }

    #[tokio::test]
    async fn a_hanging_probe_fails_after_the_timeout() {
        let ok = Arc::new(AtomicBool::new(true));
        let probes: Vec<Arc<dyn Probe>> = vec![Arc::new(Flag(ok)), Arc::new(Hangs)];
        assert!(!check_all(&probes).await);
    }

    #[tokio::test]
    async fn shut_down_sticks() {
        let health = one("a.v1.A");
        health.set_serving(&[true]).await;
        health.shut_down().await;
        health.set_serving(&[true]).await;
        assert_eq!(status(&health, "").await, Wire::NotServing);
        assert_eq!(status(&health, "a.v1.A").await, Wire::NotServing);
    }

    #[tokio::test]
    async fn liveness_ignores_probes_and_shutdown() {
        let health = one("a.v1.A");
        assert_eq!(status(&health, LIVENESS).await, Wire::Serving);
        health.set_serving(&[false]).await;
        assert_eq!(status(&health, LIVENESS).await, Wire::Serving);
        health.shut_down().await;
        assert_eq!(status(&health, LIVENESS).await, Wire::Serving);
        assert_eq!(health.services().collect::<Vec<_>>(), ["a.v1.A"]);
    }
}

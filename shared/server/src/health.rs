//! [`Health`]: the `grpc.health.v1` service, driven by [`Probe`]s.
//!
//! Every `probe_interval` all probes run (each bounded by [`PROBE_TIMEOUT`]);
//! the listed services and the whole server (`""`) are SERVING when all pass
//! and NOT_SERVING otherwise. Kubernetes' gRPC readiness probe asks for `""`.
//! From the shutdown signal on, everything stays NOT_SERVING so load
//! balancers stop routing here while calls drain.
//!
//! [`LIVENESS`] is SERVING for as long as the process answers, whatever the
//! probes say: Kubernetes' liveness probe asks for it, so that a database
//! outage takes pods out of rotation without restarting every one of them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// How long one probe may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The health service name that only says the process is alive.
pub const LIVENESS: &str = "liveness";

/// What a probe found wrong, for the log (never sent to clients).
pub type ProbeResult = Result<(), String>;

/// A dependency check, e.g. "the database answers `SELECT 1`".
pub trait Probe: Send + Sync + 'static {
    /// A short name for logs, e.g. `postgres`.
    fn name(&self) -> &str;
    /// `Ok` when the dependency is usable, otherwise why not.
    fn check(&self) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + '_>>;
}

/// The health of this server. Clones share state.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    /// The listed services plus `""`.
    services: Arc<[String]>,
    /// `true` once shutdown began; guards status writes so a probe round
    /// finishing late cannot flip a draining server back to SERVING.
    shut_down: Arc<Mutex<bool>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

impl Health {
    /// Health for `service_names` (fully qualified, e.g.
    /// `mosaic.crm.v1.CrmService`) and the whole server. Everything starts
    /// NOT_SERVING until the first probe round passes.
    pub fn new(service_names: &[&str]) -> Self {
        let reporter = HealthReporter::new();
        let services: Arc<[String]> = std::iter::once("")
            .chain(service_names.iter().copied())
            .map(str::to_owned)
            .collect();
        for name in services.iter() {
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
            services,
            shut_down: Arc::new(Mutex::new(false)),
        }
    }

    /// The listed service names (without `""` and [`LIVENESS`]).
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services
            .iter()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// The `grpc.health.v1.Health` service to mount.
    pub fn service(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService::from_health_reporter(self.reporter.clone()))
    }

    /// Sets every listed service and `""` to SERVING or NOT_SERVING; ignored
    /// once shutdown began.
    pub async fn set_serving(&self, serving: bool) {
        let shut_down = self.shut_down.lock().await;
        if *shut_down {
            return;
        }
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.set_all(status).await;
    }

    /// Sets everything to NOT_SERVING for good.
    pub async fn shut_down(&self) {
        let mut shut_down = self.shut_down.lock().await;
        *shut_down = true;
        self.set_all(ServingStatus::NotServing).await;
    }

    async fn set_all(&self, status: ServingStatus) {
        for name in self.services.iter() {
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// Runs `probes` every `interval`, starting now, until `stop` fires.
    pub async fn run_probes(
        self,
        probes: Vec<Arc<dyn Probe>>,
        interval: Duration,
        stop: CancellationToken,
    ) {
        let mut last: Option<bool> = None;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let serving = tokio::select! {
                () = stop.cancelled() => return,
                ok = check_all(&probes) => ok,
            };
            if last != Some(serving) {
                tracing::info!(serving, "health changed");
                last = Some(serving);
            }
            self.set_serving(serving).await;
        }
    }
}

/// Runs all probes at once; `true` when every one passes in time.
async fn check_all(probes: &[Arc<dyn Probe>]) -> bool {
    let results = futures::future::join_all(probes.iter().map(|p| async move {
        match tokio::time::timeout(PROBE_TIMEOUT, p.check()).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::warn!(probe = p.name(), %error, "health probe failed");
                false
            }
            Err(_) => {
                tracing::warn!(
                    probe = p.name(),
                    timeout_ms = PROBE_TIMEOUT.as_millis() as u64,
                    "health probe timed out"
                );
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
    use std::sync::atomic::{AtomicBool, Ordering};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    use tonic_health::pb::health_server::Health as _;

    struct Flag(Arc<AtomicBool>);

    impl Probe for Flag {
        fn name(&self) -> &str {
            "flag"
        }
        fn check(&self) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + '_>> {
            let ok = self.0.load(Ordering::SeqCst);
            Box::pin(async move { if ok { Ok(()) } else { Err("flag down".into()) } })
        }
    }

    struct Hangs;

    impl Probe for Hangs {
        fn name(&self) -> &str {
            "hangs"
        }
        fn check(&self) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + '_>> {
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

    #[tokio::test]
    async fn starts_not_serving_and_follows_probes() {
        let health = Health::new(&["a.v1.A"]);
        assert_eq!(status(&health, "").await, Wire::NotServing);
        assert_eq!(status(&health, "a.v1.A").await, Wire::NotServing);

        let flag = Arc::new(AtomicBool::new(true));
        assert!(check_all(&[Arc::new(Flag(flag.clone())) as Arc<dyn Probe>]).await);
        flag.store(false, Ordering::SeqCst);
        assert!(!check_all(&[Arc::new(Flag(flag.clone())) as Arc<dyn Probe>]).await);

        health.set_serving(true).await;
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
        let health = Health::new(&["a.v1.A"]);
        health.set_serving(true).await;
        health.shut_down().await;
        health.set_serving(true).await;
        assert_eq!(status(&health, "").await, Wire::NotServing);
        assert_eq!(status(&health, "a.v1.A").await, Wire::NotServing);
    }

    #[tokio::test]
    async fn liveness_ignores_probes_and_shutdown() {
        let health = Health::new(&["a.v1.A"]);
        assert_eq!(status(&health, LIVENESS).await, Wire::Serving);
        health.set_serving(false).await;
        assert_eq!(status(&health, LIVENESS).await, Wire::Serving);
        health.shut_down().await;
        assert_eq!(status(&health, LIVENESS).await, Wire::Serving);
        assert_eq!(health.services().collect::<Vec<_>>(), ["a.v1.A"]);
    }
}

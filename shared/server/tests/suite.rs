//! `mosaic_server::suite::run` with a module of the test's own: the kit names
//! its health and reflection from the generated `NamedService`, runs its
//! background task while serving, and stops it when draining.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mosaic_core::{Env, StartupError};
use mosaic_proto::identity::token_service_server::{TokenService, TokenServiceServer};
use mosaic_proto::identity::{ExchangeApiKeyRequest, ExchangeApiKeyResponse};
use mosaic_server::{Deps, Service, ServiceModule, Shutdown, add_services, suite};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

struct Tokens;

#[tonic::async_trait]
impl TokenService for Tokens {
    async fn exchange_api_key(
        &self,
        _request: Request<ExchangeApiKeyRequest>,
    ) -> Result<Response<ExchangeApiKeyResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
}

/// A service without a database, with one background task.
struct Module {
    started: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
}

impl ServiceModule for Module {
    fn name(&self) -> &'static str {
        "test"
    }

    fn build(&self, deps: &Deps) -> Result<Service, StartupError> {
        let mut service = Service::new(deps);
        add_services!(service, TokenServiceServer::new(Tokens));
        let (started, stopped) = (self.started.clone(), self.stopped.clone());
        service.background("flag", move |stop: Shutdown| async move {
            started.store(true, Ordering::SeqCst);
            stop.cancelled().await;
            stopped.store(true, Ordering::SeqCst);
        });
        Ok(service)
    }
}

#[tokio::test]
async fn a_module_is_served_named_and_its_task_runs_until_the_drain() {
    let module: &'static Module = Box::leak(Box::new(Module {
        started: Arc::default(),
        stopped: Arc::default(),
    }));
    let env = Env::from_pairs([
        ("MOSAIC_JWT_HS256_SECRET", "k".repeat(32)),
        ("MOSAIC_METRICS_ADDR", "off".to_owned()),
        ("MOSAIC_RATE_LIMIT_PER_SECOND", "0".to_owned()),
        ("MOSAIC_PROBE_INTERVAL_MS", "20".to_owned()),
        ("MOSAIC_SHUTDOWN_TIMEOUT_SECS", "2".to_owned()),
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let modules: &'static [&'static dyn ServiceModule] = Box::leak(Box::new([module as _]));
    let server = tokio::spawn(async move {
        suite::run(modules, &env, listener, Shutdown::new(), async {
            let _ = rx.await;
        })
        .await
    });

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut health = HealthClient::new(channel);
    let mut status = ServingStatus::Unknown;
    for _ in 0..100 {
        if let Ok(reply) = health
            .check(HealthCheckRequest {
                service: "mosaic.identity.v1.TokenService".into(),
            })
            .await
        {
            status = reply.into_inner().status();
            if status == ServingStatus::Serving {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, ServingStatus::Serving, "named from NamedService");
    assert!(
        module.started.load(Ordering::SeqCst),
        "the task runs while serving"
    );
    assert!(!module.stopped.load(Ordering::SeqCst));

    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(
        module.stopped.load(Ordering::SeqCst),
        "the task saw the drain"
    );
}

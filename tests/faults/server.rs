//! The real `mosaic serve` binary as a child process, against the card's own
//! dependencies, with every log line it writes kept (with the time it was
//! read) so a row can count what an outage logged. Killed when dropped.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use mosaic_core::{Env, TenantId};
use mosaic_proto::billing::{
    CreateAccountRequest, TopUpRequest, credit_service_client::CreditServiceClient,
};
use mosaic_proto::identity::{
    CreateTenantRequest, Plan, Tenant, tenant_service_client::TenantServiceClient,
};
use mosaic_tenant::{AuthConfig, Claims, TokenSettings, TokenSigner};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic::{Request, Status};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use uuid::Uuid;

/// Signs the tokens the card calls with (the same HS256 secret the child verifies).
pub(crate) struct Tokens {
    pub(crate) secret: String,
    auth: AuthConfig,
    signer: TokenSigner,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens")
    }
}

impl Tokens {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let secret: String = (0..2)
            .map(|_| Uuid::new_v4().simple().to_string())
            .collect();
        let env = Env::from_pairs([
            ("MOSAIC_JWT_HS256_SECRET", secret.as_str()),
            ("MOSAIC_JWT_ISSUER", "mosaic-faults"),
        ]);
        let settings = TokenSettings::from_env(&env)?;
        Ok(Self {
            signer: settings.signer()?,
            auth: settings.verify,
            secret,
        })
    }

    pub(crate) fn token(&self, tenant: Option<TenantId>, sub: &str, roles: &[&str]) -> String {
        let claims = Claims::new(
            &self.auth,
            sub.to_owned(),
            tenant,
            roles.iter().map(|r| (*r).to_owned()).collect(),
            Duration::from_secs(3600),
        );
        self.signer.sign(&claims).expect("sign")
    }

    pub(crate) fn platform(&self) -> String {
        self.token(None, "platform:faults", &["platform_admin"])
    }

    pub(crate) fn owner(&self, tenant: TenantId) -> String {
        self.token(Some(tenant), "user:faults-owner", &["owner"])
    }
}

/// `msg` with `authorization: Bearer <token>` and a deadline.
pub(crate) fn authed<T>(msg: T, token: &str, deadline: Duration) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    req.set_timeout(deadline);
    req
}

/// One log line of the child, with when the card read it.
#[derive(Debug, Clone)]
pub(crate) struct LogLine {
    pub(crate) at: Instant,
    pub(crate) text: String,
}

#[derive(Debug)]
pub(crate) struct Mosaic {
    child: Child,
    pub(crate) port: u16,
    pub(crate) channel: Channel,
    logs: Arc<Mutex<Vec<LogLine>>>,
}

impl Mosaic {
    /// Starts `mosaic serve` with `env` (nothing of the card's own `MOSAIC_*`
    /// environment leaks in) and waits until every service is SERVING.
    pub(crate) async fn start(env: &[(String, String)]) -> anyhow::Result<Self> {
        let port = crate::ports::child_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_mosaic"));
        command.arg("serve");
        for (name, _) in std::env::vars() {
            if name.starts_with("MOSAIC_") {
                command.env_remove(name);
            }
        }
        command
            .env("MOSAIC_GRPC_ADDR", format!("127.0.0.1:{port}"))
            .env("MOSAIC_METRICS_ADDR", "off")
            .env("MOSAIC_LOG_FORMAT", "json")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().context("spawn mosaic serve")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = logs.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(text)) = lines.next_line().await {
                    logs.lock().expect("logs").push(LogLine {
                        at: Instant::now(),
                        text,
                    });
                }
            });
        }
        let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))?
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
        let mut mosaic = Self {
            child,
            port,
            channel,
            logs,
        };
        mosaic.wait_serving(Duration::from_secs(90)).await?;
        Ok(mosaic)
    }

    async fn wait_serving(&mut self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("mosaic serve exited with {status}: {}", self.log_tail(20));
            }
            if self.health("").await == Some(ServingStatus::Serving) {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!("mosaic serve never became SERVING: {}", self.log_tail(20));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The health of `service` ("" for the whole process), or None when it does not answer.
    pub(crate) async fn health(&self, service: &str) -> Option<ServingStatus> {
        let mut req = Request::new(HealthCheckRequest {
            service: service.to_owned(),
        });
        req.set_timeout(Duration::from_millis(500));
        let status = HealthClient::new(self.channel.clone())
            .check(req)
            .await
            .ok()?
            .into_inner()
            .status;
        ServingStatus::try_from(status).ok()
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub(crate) fn sigterm(&self) -> anyhow::Result<()> {
        let pid = self.pid().context("child already exited")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        Ok(())
    }

    /// Waits for the child to exit, at most `limit`.
    pub(crate) async fn wait_exit(
        &mut self,
        limit: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        Ok(tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .transpose()?)
    }

    /// Whether the child is still the one process started (no crash, no restart).
    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Log lines read in `[from, to)`.
    pub(crate) fn logs_between(&self, from: Instant, to: Instant) -> Vec<LogLine> {
        self.logs
            .lock()
            .expect("logs")
            .iter()
            .filter(|l| l.at >= from && l.at < to)
            .cloned()
            .collect()
    }

    /// Every log line read so far.
    pub(crate) fn logs(&self) -> Vec<LogLine> {
        self.logs.lock().expect("logs").clone()
    }

    fn log_tail(&self, n: usize) -> String {
        let logs = self.logs.lock().expect("logs");
        let start = logs.len().saturating_sub(n);
        logs[start..]
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A new tenant (through identity) with a funded billing account.
    pub(crate) async fn new_tenant(
        &self,
        tokens: &Tokens,
        credits: i64,
    ) -> anyhow::Result<TenantId> {
        let platform = tokens.platform();
        let deadline = Duration::from_secs(10);
        let tenant = TenantServiceClient::new(self.channel.clone())
            .create_tenant(authed(
                CreateTenantRequest {
                    tenant: Some(Tenant {
                        display_name: "Faults".into(),
                        plan: Plan::Pro as i32,
                        ..Default::default()
                    }),
                    owner_email: format!("owner-{}@example.com", Uuid::new_v4().simple()),
                    ..Default::default()
                },
                &platform,
                deadline,
            ))
            .await
            .map_err(status_error)?
            .into_inner();
        let id = TenantId::from(tenant.tenant_id.parse::<Uuid>()?);
        let mut credit = CreditServiceClient::new(self.channel.clone());
        credit
            .create_account(authed(
                CreateAccountRequest {
                    tenant_id: tenant.tenant_id.clone(),
                },
                &platform,
                deadline,
            ))
            .await
            .map_err(status_error)?;
        if credits > 0 {
            credit
                .top_up(authed(
                    TopUpRequest {
                        tenant_id: tenant.tenant_id.clone(),
                        amount: credits,
                        idempotency_key: format!("seed-{}", Uuid::new_v4().simple()),
                        reference: "faults".into(),
                    },
                    &platform,
                    deadline,
                ))
                .await
                .map_err(status_error)?;
        }
        Ok(id)
    }
}

/// A JSON log line's field (under `fields`, or flattened at the top).
pub(crate) fn log_field(line: &serde_json::Value, name: &str) -> Option<String> {
    let value = line
        .get("fields")
        .and_then(|f| f.get(name))
        .or_else(|| line.get(name))?;
    Some(match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

pub(crate) fn status_error(status: Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

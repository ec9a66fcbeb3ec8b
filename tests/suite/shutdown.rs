//! SIGTERM drains the real `mosaic serve` process within its deadline, even
//! with a server stream held open (a health `Watch`).

use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test]
async fn sigterm_with_an_open_stream_exits_within_the_deadline() {
    crate::harness::app(); // migrated database
    let port = crate::harness::child_port();
    let secret: String = (0..2)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mosaic"))
        .arg("serve")
        .env("MOSAIC_GRPC_ADDR", format!("127.0.0.1:{port}"))
        .env("MOSAIC_METRICS_ADDR", "off")
        .env("MOSAIC_SHUTDOWN_TIMEOUT_SECS", "2")
        .env("MOSAIC_LOG", "warn")
        .env("MOSAIC_JWT_HS256_SECRET", secret)
        // The test database's data keys are wrapped by the tests' keyring.
        .env("MOSAIC_VAULT_MASTER_KEY", crate::harness::master_key())
        .env(
            "MOSAIC_VAULT_PREVIOUS_MASTER_KEYS",
            crate::harness::TEST_PREVIOUS_KEYS,
        )
        .env_remove("MOSAIC_VAULT_MASTER_KEY_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    let mut health = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(ch) = channel.connect().await {
            let mut client = HealthClient::new(ch);
            if let Ok(r) = client.check(HealthCheckRequest::default()).await
                && r.into_inner().status == ServingStatus::Serving as i32
            {
                health = Some(client);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut health = health.expect("the suite never became SERVING");
    let mut watch = health
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    let pid = Pid::from_raw(child.id().unwrap() as i32);
    let signalled = Instant::now();
    kill(pid, Signal::SIGTERM).unwrap();
    // The open stream is told first.
    let next = tokio::time::timeout(Duration::from_secs(2), watch.message()).await;
    if let Ok(Ok(Some(msg))) = next {
        assert_eq!(msg.status, ServingStatus::NotServing as i32);
    }
    let status = tokio::time::timeout(Duration::from_secs(6), child.wait())
        .await
        .expect("the process outlived its shutdown deadline")
        .unwrap();
    let took = signalled.elapsed();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use tokio::io::AsyncReadExt as _;
        let _ = pipe.read_to_string(&mut stderr).await;
    }
    assert!(status.success(), "exit status {status:?}; stderr: {stderr}");
    assert!(
        took < Duration::from_secs(4),
        "took {took:?} with a 2 s deadline"
    );
}

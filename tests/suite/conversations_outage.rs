//! MongoDB stopped mid-test (a server of the test's own, on a free port):
//! conversations answers UNAVAILABLE within the deadline and turns
//! NOT_SERVING, the other services of the same process keep working, and
//! everything recovers when MongoDB is back.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mosaic_proto::conversations::GetConversationRequest;
use mosaic_proto::crm::GetContactRequest;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use uuid::Uuid;

use crate::conversations_support::{ConvTenant, conversations_on};
use crate::harness::{app, suite_with};

/// A MongoDB-wire server of this test's own: SecantusDB from the setup's
/// `.venv` (or the command in `MOSAIC_TEST_MONGOD`, given `--host`, `--port`
/// and `--storage-path`), killed and its data removed when dropped.
struct OwnMongo {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnMongo {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("mosaic-mongo-{}", Uuid::now_v7().simple()));
        let mut own = Self {
            port,
            dir,
            child: None,
        };
        own.up();
        own
    }

    fn up(&mut self) {
        let mut command = match std::env::var("MOSAIC_TEST_MONGOD") {
            Ok(program) => Command::new(program),
            Err(_) => {
                let mut secantus = Command::new(format!(
                    "{}/.venv/bin/secantusd-py",
                    env!("CARGO_MANIFEST_DIR")
                ));
                // Acknowledged writes survive the kill below, as with a journal.
                secantus.arg("--sync-on-commit");
                secantus
            }
        };
        let child = command
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--storage-path")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the MongoDB-wire server (run deploy/local/setup.sh)");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "own MongoDB never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server (as a crash would).
    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}/outage", self.port)
    }
}

impl Drop for OwnMongo {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn status(channel: &Channel, service: &str) -> i32 {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map(|r| r.into_inner().status)
        .unwrap_or(-1)
}

async fn wait_for(channel: &Channel, service: &str, want: ServingStatus, within: Duration) {
    let started = Instant::now();
    while status(channel, service).await != want as i32 {
        assert!(
            started.elapsed() < within,
            "{service} never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const CONVERSATIONS: &str = "mosaic.conversations.v1.ConversationService";
const CONTACTS: &str = "mosaic.crm.v1.ContactService";

#[tokio::test]
async fn a_mongodb_outage_fails_only_conversations_and_heals() {
    let mut mongo = OwnMongo::start();
    let t = ConvTenant::new().await;
    let channel = suite_with(
        app()
            .env
            .clone()
            .with("MOSAIC_CONVERSATIONS_MONGODB_URL", mongo.url())
            .with("MOSAIC_MONGODB_TIMEOUT_MS", "500"),
    )
    .await;
    wait_for(
        &channel,
        CONVERSATIONS,
        ServingStatus::Serving,
        Duration::from_secs(30),
    )
    .await;
    let c = t.start_on(channel.clone()).await;
    let get = || {
        let mut req = t.req(GetConversationRequest {
            conversation_id: c.conversation_id.clone(),
        });
        req.set_timeout(Duration::from_secs(3));
        let channel = channel.clone();
        async move { conversations_on(channel).get_conversation(req).await }
    };
    get().await.unwrap();

    mongo.down();
    let asked = Instant::now();
    let e = get().await.unwrap_err();
    let took = asked.elapsed();
    assert!(
        matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{e:?}"
    );
    assert!(
        took < Duration::from_millis(3200),
        "answered after {took:?}"
    );
    wait_for(
        &channel,
        CONVERSATIONS,
        ServingStatus::NotServing,
        Duration::from_secs(5),
    )
    .await;
    // crm, in the same process, is unaffected.
    assert_eq!(
        status(&channel, CONTACTS).await,
        ServingStatus::Serving as i32
    );
    crate::crm_support::contacts_on(channel.clone())
        .get_contact(t.req(GetContactRequest {
            contact_id: t.contact_id.clone(),
        }))
        .await
        .expect("crm works while MongoDB is down");

    mongo.up();
    let back = Instant::now();
    loop {
        match get().await {
            Ok(found) => {
                assert_eq!(found.into_inner().conversation_id, c.conversation_id);
                break;
            }
            Err(e) => {
                assert!(
                    back.elapsed() < Duration::from_secs(30),
                    "no recovery: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    wait_for(
        &channel,
        CONVERSATIONS,
        ServingStatus::Serving,
        Duration::from_secs(10),
    )
    .await;
}

//! MongoDB stopped mid-test (a server of the test's own, on a free port):
//! conversations answers UNAVAILABLE within the deadline and turns
//! NOT_SERVING, the other services of the same process keep working, and
//! everything recovers when MongoDB is back.

use std::time::{Duration, Instant};

use mosaic_proto::conversations::GetConversationRequest;
use mosaic_proto::crm::GetContactRequest;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::conversations_support::{ConvTenant, conversations_on};
use crate::harness::{app, suite_with};
use crate::own_mongo::OwnMongo;

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

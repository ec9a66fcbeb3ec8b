//! SignalService: batch ingestion that drops duplicates by (provider,
//! event_id) and by signal_hash, idempotent across retries and concurrent
//! batches; listing; bad input; isolation.

use mosaic_proto::crm::{IngestSignalsRequest, ListSignalsRequest, Signal};
use tonic::Code;
use uuid::Uuid;

use crate::crm_support::{CrmTenant, signals};
use crate::harness::{assert_bad_field, assert_error};

fn signal(provider: &str, event: &str) -> Signal {
    Signal {
        provider: provider.into(),
        event_id: event.into(),
        signal_type: "page_view".into(),
        ..Default::default()
    }
}

fn ingest(s: Vec<Signal>) -> IngestSignalsRequest {
    IngestSignalsRequest { signals: s }
}

async fn listed(t: &CrmTenant, req: ListSignalsRequest) -> Vec<Signal> {
    let mut out = Vec::new();
    let mut req = req;
    loop {
        let page = signals()
            .list_signals(t.req(req.clone()))
            .await
            .unwrap()
            .into_inner();
        out.extend(page.signals);
        if page.next_page_token.is_empty() {
            return out;
        }
        req.page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn duplicates_are_dropped_and_retries_are_harmless() {
    let t = CrmTenant::new().await;
    let co = t.company("Acme").await;
    let batch = vec![
        Signal {
            company_id: co.company_id.clone(),
            ..signal("hubspot", "e1")
        },
        signal("hubspot", "e2"),
        signal("hubspot", "e1"), // same key in the batch
        Signal {
            signal_hash: "sha:abc".into(),
            ..signal("clearbit", "x1")
        },
        Signal {
            signal_hash: "sha:abc".into(),
            ..signal("bombora", "y9")
        }, // same hash, other provider
        signal("clearbit", "e1"), // same event id, other provider
    ];
    let first = signals()
        .ingest_signals(t.as_role("member", ingest(batch.clone())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.accepted_count, first.duplicate_count), (4, 2));
    let retry = signals()
        .ingest_signals(t.req(ingest(batch)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((retry.accepted_count, retry.duplicate_count), (0, 6));
    assert_eq!(t.count("signals").await, 4);

    let all = listed(
        &t,
        ListSignalsRequest {
            page_size: 3,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(all.len(), 4);
    let ids: Vec<&str> = all.iter().map(|s| s.signal_id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted, "newest first");
    let hubspot = listed(
        &t,
        ListSignalsRequest {
            provider: "hubspot".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(hubspot.len(), 2);
    let about = listed(
        &t,
        ListSignalsRequest {
            company_id: co.company_id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(about.len(), 1);
    assert_eq!(about[0].event_id, "e1");
    assert!(about[0].occur_time.is_some() && about[0].create_time.is_some());
}

/// Eight clients deliver the same 300 events at once, each in its own
/// order: every event is stored exactly once and the counts add up.
#[tokio::test]
async fn concurrent_duplicate_batches_store_each_event_once() {
    let t = CrmTenant::new().await;
    let events: Vec<Signal> = (0..300)
        .map(|i| Signal {
            signal_hash: if i % 2 == 0 {
                format!("h{i}")
            } else {
                String::new()
            },
            ..signal("segment", &format!("evt-{i}"))
        })
        .collect();
    let mut tasks = Vec::new();
    for k in 0..8usize {
        let mut mine = events.clone();
        mine.rotate_left(k * 37);
        if k % 2 == 1 {
            mine.reverse();
        }
        let req = t.req(ingest(mine));
        tasks.push(tokio::spawn(
            async move { signals().ingest_signals(req).await },
        ));
    }
    let (mut accepted, mut duplicates) = (0, 0);
    for task in tasks {
        let reply = task.await.unwrap().unwrap().into_inner();
        accepted += reply.accepted_count;
        duplicates += reply.duplicate_count;
    }
    assert_eq!(accepted, 300);
    assert_eq!(duplicates, 7 * 300);
    assert_eq!(t.count("signals").await, 300);
}

#[tokio::test]
async fn a_bad_signal_fails_the_whole_batch() {
    let t = CrmTenant::new().await;
    let cases: Vec<(Signal, &str)> = vec![
        (signal("", "e"), "signals[1].provider"),
        (signal("HubSpot", "e"), "signals[1].provider"),
        (signal("hubspot", ""), "signals[1].event_id"),
        (signal("hubspot", &"e".repeat(201)), "signals[1].event_id"),
        (
            Signal {
                signal_type: "page view".into(),
                ..signal("p", "e")
            },
            "signals[1].signal_type",
        ),
        (
            Signal {
                signal_hash: "has space".into(),
                ..signal("p", "e")
            },
            "signals[1].signal_hash",
        ),
        (
            Signal {
                company_id: "nope".into(),
                ..signal("p", "e")
            },
            "signals[1].company_id",
        ),
        (
            Signal {
                occur_time: Some(prost_types::Timestamp {
                    seconds: 4_102_444_800,
                    nanos: 0,
                }),
                ..signal("p", "e")
            },
            "signals[1].occur_time",
        ),
    ];
    for (bad, field) in cases {
        let e = signals()
            .ingest_signals(t.req(ingest(vec![signal("ok", "fine"), bad])))
            .await
            .unwrap_err();
        assert_bad_field(&e, field);
    }
    let e = signals()
        .ingest_signals(t.req(ingest(vec![])))
        .await
        .unwrap_err();
    assert_bad_field(&e, "signals");
    let e = signals()
        .ingest_signals(t.req(ingest(
            (0..1001).map(|i| signal("p", &format!("e{i}"))).collect(),
        )))
        .await
        .unwrap_err();
    assert_bad_field(&e, "signals");
    // Another tenant's (or an unknown) company is NOT_FOUND, nothing stored.
    let foreign = CrmTenant::new().await.company("Theirs").await;
    for id in [foreign.company_id, Uuid::now_v7().to_string()] {
        let e = signals()
            .ingest_signals(t.req(ingest(vec![
                signal("ok", "fine"),
                Signal {
                    company_id: id,
                    ..signal("p", "e")
                },
            ])))
            .await
            .unwrap_err();
        assert_error(&e, Code::NotFound, "COMPANY_NOT_FOUND");
    }
    let e = signals()
        .ingest_signals(t.as_role("viewer", ingest(vec![signal("ok", "fine")])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(t.count("signals").await, 0);
    let e = signals()
        .list_signals(t.req(ListSignalsRequest {
            provider: "Bad Provider".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_bad_field(&e, "provider");
}

#[tokio::test]
async fn tenants_share_no_keys_and_see_no_signals() {
    let a = CrmTenant::new().await;
    let b = CrmTenant::new().await;
    let co = a.company("A's").await;
    let batch = vec![Signal {
        signal_hash: "same".into(),
        ..signal("hubspot", "e1")
    }];
    signals()
        .ingest_signals(a.req(ingest(vec![Signal {
            company_id: co.company_id.clone(),
            ..signal("hubspot", "about-a")
        }])))
        .await
        .unwrap();
    let ra = signals()
        .ingest_signals(a.req(ingest(batch.clone())))
        .await
        .unwrap()
        .into_inner();
    let rb = signals()
        .ingest_signals(b.req(ingest(batch)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ra.accepted_count, rb.accepted_count),
        (1, 1),
        "keys are per tenant"
    );
    let seen = listed(&b, ListSignalsRequest::default()).await;
    assert_eq!(seen.len(), 1);
    let filtered = listed(
        &b,
        ListSignalsRequest {
            company_id: co.company_id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert!(filtered.is_empty(), "A's company id finds nothing in B");
    assert_eq!(a.count("signals").await, 2);
}

//! Holds that expire (the sweeper), and calls that race with one key.

use std::time::{Duration, Instant};

use futures::future::join_all;
use mosaic_proto::billing::{
    CaptureRequest, EntryKind, GetHoldRequest, HoldStatus, ReleaseRequest, ReserveRequest,
};
use tonic::Code;

use crate::billing_support::{BillingTenant, credits, key};
use crate::harness::{assert_error, authed};

#[tokio::test]
async fn billing_an_expired_hold_is_released_by_the_sweeper_and_refused_for_capture() {
    let t = BillingTenant::new(100).await;
    let hold = credits()
        .reserve(authed(
            ReserveRequest {
                amount: 40,
                idempotency_key: key(),
                expire_after: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            },
            &t.member,
        ))
        .await
        .unwrap()
        .into_inner();
    let kept = t.reserve(10, &key()).await.unwrap();
    assert_eq!(t.account().await.available, 50);

    // The sweeper runs every second (MOSAIC_BILLING_SWEEP_INTERVAL_MS).
    let deadline = Instant::now() + Duration::from_secs(15);
    let swept = loop {
        let got = credits()
            .get_hold(authed(
                GetHoldRequest {
                    hold_id: hold.hold_id.clone(),
                    ..Default::default()
                },
                &t.member,
            ))
            .await
            .unwrap()
            .into_inner();
        if got.status() == HoldStatus::Expired {
            break got;
        }
        assert!(Instant::now() < deadline, "the hold was not swept: {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(swept.resolve_time.is_some());
    let account = t.account().await;
    assert_eq!(
        (account.balance, account.held, account.available),
        (100, 10, 90)
    );
    let ledger = t.ledger().await;
    let release = ledger
        .iter()
        .find(|e| e.kind() == EntryKind::Release && e.hold_id == hold.hold_id)
        .expect("the sweeper's release entry");
    assert_eq!(
        (release.held_change, release.actor.as_str()),
        (-40, "system:hold-sweeper")
    );

    // Refused for capture afterwards; a release returns the sweeper's entry.
    let capture = credits()
        .capture(authed(
            CaptureRequest {
                hold_id: hold.hold_id.clone(),
                amount: 1,
                idempotency_key: key(),
                ..Default::default()
            },
            &t.member,
        ))
        .await;
    assert_error(
        &capture.unwrap_err(),
        Code::FailedPrecondition,
        "HOLD_EXPIRED",
    );
    let again = credits()
        .release(authed(
            ReleaseRequest {
                hold_id: hold.hold_id.clone(),
                ..Default::default()
            },
            &t.member,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&again, release);
    // The unexpired hold is untouched.
    let kept = credits()
        .get_hold(authed(
            GetHoldRequest {
                hold_id: kept.hold_id,
                ..Default::default()
            },
            &t.member,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.status(), HoldStatus::Pending);
    assert_eq!(t.reconcile().await.drift_total, 0);
}

#[tokio::test]
async fn billing_eight_racing_calls_with_one_key_have_one_effect_and_one_answer() {
    let t = BillingTenant::new(1000).await;
    let shared = key();
    let answers = join_all((0..8).map(|_| t.consume(7, &shared))).await;
    let first = answers[0].as_ref().unwrap().clone();
    for answer in &answers {
        assert_eq!(answer.as_ref().unwrap(), &first);
    }
    assert_eq!(t.account().await.balance, 993);

    let hold_key = key();
    let holds = join_all((0..8).map(|_| t.reserve(100, &hold_key))).await;
    let hold = holds[0].as_ref().unwrap().clone();
    assert!(holds.iter().all(|h| h.as_ref().unwrap() == &hold));
    assert_eq!(t.account().await.held, 100);

    // Eight captures with one key, and eight releases racing them: the hold
    // resolves once, either way.
    let capture_key = key();
    let captures = join_all((0..8).map(|_| {
        let request = CaptureRequest {
            hold_id: hold.hold_id.clone(),
            amount: 60,
            idempotency_key: capture_key.clone(),
            ..Default::default()
        };
        let token = t.member.clone();
        async move { credits().capture(authed(request, &token)).await }
    }));
    let releases = join_all((0..8).map(|_| {
        let request = ReleaseRequest {
            hold_id: hold.hold_id.clone(),
            ..Default::default()
        };
        let token = t.member.clone();
        async move { credits().release(authed(request, &token)).await }
    }));
    let (captures, releases) = tokio::join!(captures, releases);
    let captured: Vec<_> = captures.iter().filter_map(|c| c.as_ref().ok()).collect();
    let released: Vec<_> = releases.iter().filter_map(|r| r.as_ref().ok()).collect();
    let account = t.account().await;
    if captured.is_empty() {
        assert!(
            released
                .iter()
                .all(|r| r.get_ref() == released[0].get_ref())
        );
        for c in &captures {
            assert_error(
                c.as_ref().unwrap_err(),
                Code::FailedPrecondition,
                "HOLD_RELEASED",
            );
        }
        assert_eq!((account.balance, account.held), (993, 0));
    } else {
        assert_eq!(
            captured.len(),
            8,
            "every capture with the key answers alike"
        );
        assert!(
            captured
                .iter()
                .all(|c| c.get_ref() == captured[0].get_ref())
        );
        for r in &releases {
            assert_error(
                r.as_ref().unwrap_err(),
                Code::FailedPrecondition,
                "HOLD_CAPTURED",
            );
        }
        assert_eq!((account.balance, account.held), (933, 0));
    }
    let entries = t.ledger().await;
    let resolutions = entries
        .iter()
        .filter(|e| e.hold_id == hold.hold_id && e.kind() != EntryKind::Hold)
        .count();
    assert_eq!(resolutions, 1);
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.idempotency_key == shared)
            .count(),
        1
    );
    assert_eq!(t.reconcile().await.drift_total, 0);
}

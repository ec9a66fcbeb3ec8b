//! billing's methods one by one: the happy path of each, who may call them,
//! another tenant's anything (NOT_FOUND), and bad input (the field or the
//! reason named, nothing written).

use mosaic_proto::billing::{
    AdjustRequest, CaptureRequest, ConsumeRequest, CreateAccountRequest, EntryKind,
    GetAccountRequest, GetHoldRequest, HoldStatus, ListLedgerRequest, ReconcileRequest,
    RefundRequest, ReleaseRequest, ReserveRequest, TopUpRequest,
};
use mosaic_proto::common::ListAuditEventsRequest;
use tonic::Code;

use crate::billing_support::{
    BillingTenant, assert_code, billing_audit, credits, error_metadata, key,
};
use crate::harness::{app, assert_bad_field, assert_error, authed};

#[tokio::test]
async fn billing_every_method_works_on_its_own_account() {
    let t = BillingTenant::new(0).await;
    let platform = &t.platform;
    let tenant_id = t.id().to_string();

    // CreateAccount opens an empty account; a second is ALREADY_EXISTS.
    let opened = credits()
        .create_account(authed(
            CreateAccountRequest {
                tenant_id: tenant_id.clone(),
            },
            platform,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((opened.balance, opened.held, opened.available), (0, 0, 0));
    let again = credits()
        .create_account(authed(
            CreateAccountRequest {
                tenant_id: tenant_id.clone(),
            },
            platform,
        ))
        .await;
    assert_error(&again.unwrap_err(), Code::AlreadyExists, "ACCOUNT_EXISTS");

    // TopUp, retried with its key: one effect, the first result.
    let top_up = TopUpRequest {
        tenant_id: tenant_id.clone(),
        amount: 1000,
        idempotency_key: key(),
        reference: "pay_1".into(),
    };
    let first = credits()
        .top_up(authed(top_up.clone(), platform))
        .await
        .unwrap()
        .into_inner();
    let retry = credits()
        .top_up(authed(top_up.clone(), platform))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, retry);
    assert_eq!(
        (first.kind(), first.amount, first.balance_after, first.seq),
        (EntryKind::TopUp, 1000, 1000, 1)
    );
    // The same key with another amount.
    let other = credits()
        .top_up(authed(
            TopUpRequest {
                amount: 999,
                ..top_up
            },
            platform,
        ))
        .await;
    assert_bad_field(&other.unwrap_err(), "idempotency_key");

    // Consume, retried.
    let consume_key = key();
    let consumed = t.consume(100, &consume_key).await.unwrap();
    assert_eq!(t.consume(100, &consume_key).await.unwrap(), consumed);
    assert_eq!(
        (consumed.kind(), consumed.amount, consumed.balance_after),
        (EntryKind::Consumption, -100, 900)
    );
    assert_bad_field(
        &t.consume(101, &consume_key).await.unwrap_err(),
        "idempotency_key",
    );

    // Reserve, Capture part of it (the rest is released), GetHold.
    let hold_key = key();
    let hold = t.reserve(300, &hold_key).await.unwrap();
    assert_eq!(t.reserve(300, &hold_key).await.unwrap(), hold);
    assert_eq!(hold.status(), HoldStatus::Pending);
    let account = t.account().await;
    assert_eq!(
        (account.balance, account.held, account.available),
        (900, 300, 600)
    );
    let capture = CaptureRequest {
        hold_id: hold.hold_id.clone(),
        amount: 120,
        idempotency_key: key(),
        ..Default::default()
    };
    let captured = credits()
        .capture(authed(capture.clone(), &t.member))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        credits()
            .capture(authed(capture, &t.member))
            .await
            .unwrap()
            .into_inner(),
        captured
    );
    assert_eq!(
        (captured.kind(), captured.amount, captured.held_change),
        (EntryKind::Capture, -120, -300)
    );
    let account = t.account().await;
    assert_eq!(
        (account.balance, account.held, account.available),
        (780, 0, 780)
    );
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
    assert_eq!(
        (got.status(), got.captured_amount),
        (HoldStatus::Captured, 120)
    );
    // A captured hold cannot be captured again (another key) or released.
    let recapture = credits()
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
        &recapture.unwrap_err(),
        Code::FailedPrecondition,
        "HOLD_CAPTURED",
    );
    let release = credits()
        .release(authed(
            ReleaseRequest {
                hold_id: hold.hold_id.clone(),
                ..Default::default()
            },
            &t.member,
        ))
        .await;
    assert_error(
        &release.unwrap_err(),
        Code::FailedPrecondition,
        "HOLD_CAPTURED",
    );

    // Release voids a hold; releasing again returns the same entry.
    let voided = t.reserve(50, &key()).await.unwrap();
    let release = ReleaseRequest {
        hold_id: voided.hold_id.clone(),
        ..Default::default()
    };
    let released = credits()
        .release(authed(release.clone(), &t.member))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        credits()
            .release(authed(release, &t.member))
            .await
            .unwrap()
            .into_inner(),
        released
    );
    assert_eq!(
        (released.kind(), released.amount, released.held_change),
        (EntryKind::Release, 0, -50)
    );
    let capture_released = credits()
        .capture(authed(
            CaptureRequest {
                hold_id: voided.hold_id.clone(),
                amount: 1,
                idempotency_key: key(),
                ..Default::default()
            },
            &t.member,
        ))
        .await;
    assert_error(
        &capture_released.unwrap_err(),
        Code::FailedPrecondition,
        "HOLD_RELEASED",
    );

    // Refund part of the consumption and of the capture, then the rest of it is all that is left.
    let refund = RefundRequest {
        tenant_id: tenant_id.clone(),
        entry_id: consumed.entry_id.clone(),
        amount: 60,
        idempotency_key: key(),
        reference: "goodwill".into(),
    };
    let refunded = credits()
        .refund(authed(refund.clone(), platform))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        credits()
            .refund(authed(refund.clone(), platform))
            .await
            .unwrap()
            .into_inner(),
        refunded
    );
    assert_eq!(
        (
            refunded.kind(),
            refunded.amount,
            refunded.refund_of.as_str()
        ),
        (EntryKind::Refund, 60, consumed.entry_id.as_str())
    );
    let too_much = credits()
        .refund(authed(
            RefundRequest {
                amount: 41,
                idempotency_key: key(),
                ..refund.clone()
            },
            platform,
        ))
        .await
        .unwrap_err();
    assert_error(&too_much, Code::FailedPrecondition, "REFUND_EXCEEDS_CHARGE");
    assert_eq!(
        error_metadata(&too_much, "refundable").as_deref(),
        Some("40")
    );
    credits()
        .refund(authed(
            RefundRequest {
                amount: 40,
                idempotency_key: key(),
                ..refund.clone()
            },
            platform,
        ))
        .await
        .unwrap();
    credits()
        .refund(authed(
            RefundRequest {
                entry_id: captured.entry_id.clone(),
                amount: 120,
                idempotency_key: key(),
                ..refund.clone()
            },
            platform,
        ))
        .await
        .unwrap();
    let not_a_charge = credits()
        .refund(authed(
            RefundRequest {
                entry_id: first.entry_id.clone(),
                amount: 1,
                idempotency_key: key(),
                ..refund
            },
            platform,
        ))
        .await;
    assert_error(
        &not_a_charge.unwrap_err(),
        Code::FailedPrecondition,
        "ENTRY_NOT_REFUNDABLE",
    );
    assert_eq!(t.account().await.balance, 1000);

    // ListLedger: newest first, paged, filtered by kind and time.
    let all = t.ledger().await;
    let seqs: Vec<i64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=all.len() as i64).rev().collect::<Vec<_>>());
    assert_eq!(all.iter().map(|e| e.amount).sum::<i64>(), 1000);
    assert_eq!(all.iter().map(|e| e.held_change).sum::<i64>(), 0);
    let mut paged = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = credits()
            .list_ledger(authed(
                ListLedgerRequest {
                    page_size: 2,
                    page_token,
                    ..Default::default()
                },
                &t.member,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 2);
        paged.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(paged, all);
    let refunds = credits()
        .list_ledger(authed(
            ListLedgerRequest {
                kind: EntryKind::Refund as i32,
                ..Default::default()
            },
            &t.member,
        ))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(refunds.len(), 3);
    let future = credits()
        .list_ledger(authed(
            ListLedgerRequest {
                start_time: Some(prost_types::Timestamp {
                    seconds: chrono::Utc::now().timestamp() + 3600,
                    nanos: 0,
                }),
                ..Default::default()
            },
            &t.member,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(future.entries.is_empty());

    // Reconcile: no drift, for the tenant and for every account.
    let one = t.reconcile().await;
    assert_eq!((one.accounts_checked, one.drift_total), (1, 0));
    let every = credits()
        .reconcile(authed(ReconcileRequest::default(), platform))
        .await
        .unwrap()
        .into_inner();
    assert!(every.accounts_checked >= 1);
    assert!(!every.drifted.iter().any(|d| d.tenant_id == tenant_id));

    // Every mutation is audited.
    let events = billing_audit()
        .list_audit_events(authed(
            ListAuditEventsRequest {
                page_size: 1000,
                ..Default::default()
            },
            &t.tenant.owner_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    for action in [
        "account.create",
        "ledger.top_up",
        "ledger.consume",
        "hold.reserve",
        "hold.capture",
        "hold.release",
        "ledger.refund",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    // One event per ledger entry, plus the account's opening.
    assert_eq!(events.len(), all.len() + 1, "{actions:?}");
}

#[tokio::test]
async fn billing_short_credits_are_refused_with_what_is_available_and_write_nothing() {
    let t = BillingTenant::new(50).await;
    let before = t.ledger().await;
    let short = t.consume(51, &key()).await.unwrap_err();
    assert_error(&short, Code::FailedPrecondition, "INSUFFICIENT_CREDITS");
    assert_eq!(error_metadata(&short, "available").as_deref(), Some("50"));
    assert_eq!(error_metadata(&short, "requested").as_deref(), Some("51"));
    t.reserve(30, &key()).await.unwrap();
    let short = t.reserve(21, &key()).await.unwrap_err();
    assert_error(&short, Code::FailedPrecondition, "INSUFFICIENT_CREDITS");
    assert_eq!(error_metadata(&short, "available").as_deref(), Some("20"));
    let short = t.consume(21, &key()).await.unwrap_err();
    assert_eq!(error_metadata(&short, "available").as_deref(), Some("20"));
    assert_eq!(
        t.ledger().await.len(),
        before.len() + 1,
        "only the hold was written"
    );
    let account = t.account().await;
    assert_eq!(
        (account.balance, account.held, account.available),
        (50, 30, 20)
    );
    // A key refused for short credits is still free.
    let retry_key = key();
    t.consume(21, &retry_key).await.unwrap_err();
    t.top_up(1).await.unwrap();
    assert_eq!(t.consume(21, &retry_key).await.unwrap().balance_after, 30);
}

#[tokio::test]
async fn billing_a_tenant_role_cannot_credit_refund_or_reconcile() {
    let t = BillingTenant::new(100).await;
    let consumed = t.consume(10, &key()).await.unwrap();
    let tenant_id = t.id().to_string();
    for token in [
        t.tenant.owner_token.clone(),
        t.tenant.token("admin"),
        t.member.clone(),
    ] {
        let top_up = credits()
            .top_up(authed(
                TopUpRequest {
                    tenant_id: tenant_id.clone(),
                    amount: 10,
                    idempotency_key: key(),
                    reference: String::new(),
                },
                &token,
            ))
            .await;
        assert_code(&top_up, Code::PermissionDenied);
        let top_up_own = credits()
            .top_up(authed(
                TopUpRequest {
                    amount: 10,
                    idempotency_key: key(),
                    ..Default::default()
                },
                &token,
            ))
            .await;
        assert_code(&top_up_own, Code::PermissionDenied);
        let refund = credits()
            .refund(authed(
                RefundRequest {
                    tenant_id: tenant_id.clone(),
                    entry_id: consumed.entry_id.clone(),
                    amount: 1,
                    idempotency_key: key(),
                    reference: String::new(),
                },
                &token,
            ))
            .await;
        assert_code(&refund, Code::PermissionDenied);
        let reconcile = credits()
            .reconcile(authed(
                ReconcileRequest {
                    tenant_id: tenant_id.clone(),
                },
                &token,
            ))
            .await;
        assert_code(&reconcile, Code::PermissionDenied);
        let create = credits()
            .create_account(authed(
                CreateAccountRequest {
                    tenant_id: tenant_id.clone(),
                },
                &token,
            ))
            .await;
        assert_code(&create, Code::PermissionDenied);
    }
    // A viewer reads but cannot spend.
    let viewer = t.tenant.token("viewer");
    credits()
        .get_account(authed(GetAccountRequest::default(), &viewer))
        .await
        .unwrap();
    let consume = credits()
        .consume(authed(
            ConsumeRequest {
                amount: 1,
                idempotency_key: key(),
                ..Default::default()
            },
            &viewer,
        ))
        .await;
    assert_code(&consume, Code::PermissionDenied);
    // The payment integration's service role tops up any tenant, and nothing else.
    let payments = app().token(None, "platform:payments", &["svc:payments"]);
    let credited = credits()
        .top_up(authed(
            TopUpRequest {
                tenant_id: tenant_id.clone(),
                amount: 5,
                idempotency_key: key(),
                reference: "psp".into(),
            },
            &payments,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (credited.balance_after, credited.actor.as_str()),
        (95, "platform:payments")
    );
    let consume = credits()
        .consume(authed(
            ConsumeRequest {
                tenant_id: tenant_id.clone(),
                amount: 1,
                idempotency_key: key(),
                ..Default::default()
            },
            &payments,
        ))
        .await;
    assert_code(&consume, Code::PermissionDenied);
    assert_eq!(t.account().await.balance, 95);
    assert_eq!(t.reconcile().await.drift_total, 0);
}

#[tokio::test]
async fn billing_another_tenants_anything_is_not_found() {
    let a = BillingTenant::new(500).await;
    let b = BillingTenant::new(500).await;
    let a_id = a.id().to_string();
    let consumed = a.consume(10, &key()).await.unwrap();
    let hold = a.reserve(20, &key()).await.unwrap();
    let before = a.ledger().await;

    // B names A: NOT_FOUND everywhere, never PERMISSION_DENIED.
    let get = credits()
        .get_account(authed(
            GetAccountRequest {
                tenant_id: a_id.clone(),
            },
            &b.member,
        ))
        .await;
    assert_error(&get.unwrap_err(), Code::NotFound, "ACCOUNT_NOT_FOUND");
    let consume = credits()
        .consume(authed(
            ConsumeRequest {
                tenant_id: a_id.clone(),
                amount: 1,
                idempotency_key: key(),
                ..Default::default()
            },
            &b.member,
        ))
        .await;
    assert_error(&consume.unwrap_err(), Code::NotFound, "ACCOUNT_NOT_FOUND");
    let reserve = credits()
        .reserve(authed(
            ReserveRequest {
                tenant_id: a_id.clone(),
                amount: 1,
                idempotency_key: key(),
                ..Default::default()
            },
            &b.member,
        ))
        .await;
    assert_error(&reserve.unwrap_err(), Code::NotFound, "ACCOUNT_NOT_FOUND");
    let list = credits()
        .list_ledger(authed(
            ListLedgerRequest {
                tenant_id: a_id.clone(),
                ..Default::default()
            },
            &b.member,
        ))
        .await;
    assert_error(&list.unwrap_err(), Code::NotFound, "ACCOUNT_NOT_FOUND");

    // B names A's hold and charge from its own tenant: NOT_FOUND.
    let capture = credits()
        .capture(authed(
            CaptureRequest {
                hold_id: hold.hold_id.clone(),
                amount: 1,
                idempotency_key: key(),
                ..Default::default()
            },
            &b.member,
        ))
        .await;
    assert_error(&capture.unwrap_err(), Code::NotFound, "HOLD_NOT_FOUND");
    let release = credits()
        .release(authed(
            ReleaseRequest {
                hold_id: hold.hold_id.clone(),
                ..Default::default()
            },
            &b.member,
        ))
        .await;
    assert_error(&release.unwrap_err(), Code::NotFound, "HOLD_NOT_FOUND");
    let get_hold = credits()
        .get_hold(authed(
            GetHoldRequest {
                hold_id: hold.hold_id.clone(),
                ..Default::default()
            },
            &b.member,
        ))
        .await;
    assert_error(&get_hold.unwrap_err(), Code::NotFound, "HOLD_NOT_FOUND");
    // A platform refund in B's tenant of A's charge.
    let refund = credits()
        .refund(authed(
            RefundRequest {
                tenant_id: b.id().to_string(),
                entry_id: consumed.entry_id.clone(),
                amount: 1,
                idempotency_key: key(),
                reference: String::new(),
            },
            &b.platform,
        ))
        .await;
    assert_error(&refund.unwrap_err(), Code::NotFound, "ENTRY_NOT_FOUND");
    // B's own ledger has none of A's entries; A's is unchanged.
    assert!(
        b.ledger()
            .await
            .iter()
            .all(|e| e.tenant_id == b.id().to_string())
    );
    assert_eq!(a.ledger().await, before);
    assert_eq!(a.account().await.held, 20);
    // A key is per tenant: B may use A's.
    let shared = key();
    a.consume(1, &shared).await.unwrap();
    assert_eq!(b.consume(2, &shared).await.unwrap().amount, -2);
}

#[tokio::test]
async fn billing_bad_input_names_the_field_and_writes_nothing() {
    let t = BillingTenant::new(100).await;
    let hold = t.reserve(10, &key()).await.unwrap();
    let consumed = t.consume(10, &key()).await.unwrap();
    let before = t.ledger().await;
    let member = &t.member;

    for amount in [0, -1, i64::MIN, 1_000_000_000_001, i64::MAX] {
        assert_bad_field(&t.consume(amount, &key()).await.unwrap_err(), "amount");
        assert_bad_field(&t.reserve(amount, &key()).await.unwrap_err(), "amount");
        let top_up = credits()
            .top_up(authed(
                TopUpRequest {
                    tenant_id: t.id().to_string(),
                    amount,
                    idempotency_key: key(),
                    reference: String::new(),
                },
                &t.platform,
            ))
            .await;
        assert_bad_field(&top_up.unwrap_err(), "amount");
    }
    for bad_key in ["", "has space", "ü", &"k".repeat(129), "a/b"] {
        assert_bad_field(&t.consume(1, bad_key).await.unwrap_err(), "idempotency_key");
    }
    let reference = credits()
        .consume(authed(
            ConsumeRequest {
                amount: 1,
                idempotency_key: key(),
                reference: "r".repeat(201),
                ..Default::default()
            },
            member,
        ))
        .await;
    assert_bad_field(&reference.unwrap_err(), "reference");
    let expiry = credits()
        .reserve(authed(
            ReserveRequest {
                amount: 1,
                idempotency_key: key(),
                expire_after: Some(prost_types::Duration {
                    seconds: 8 * 86400,
                    nanos: 0,
                }),
                ..Default::default()
            },
            member,
        ))
        .await;
    assert_bad_field(&expiry.unwrap_err(), "expire_after");

    // Holds: unknown, malformed, captured above their amount.
    let unknown = credits()
        .capture(authed(
            CaptureRequest {
                hold_id: uuid::Uuid::now_v7().to_string(),
                amount: 1,
                idempotency_key: key(),
                ..Default::default()
            },
            member,
        ))
        .await;
    assert_error(&unknown.unwrap_err(), Code::NotFound, "HOLD_NOT_FOUND");
    let malformed = credits()
        .release(authed(
            ReleaseRequest {
                hold_id: "not-a-uuid".into(),
                ..Default::default()
            },
            member,
        ))
        .await;
    assert_bad_field(&malformed.unwrap_err(), "hold_id");
    let above = credits()
        .capture(authed(
            CaptureRequest {
                hold_id: hold.hold_id.clone(),
                amount: 11,
                idempotency_key: key(),
                ..Default::default()
            },
            member,
        ))
        .await;
    assert_bad_field(&above.unwrap_err(), "amount");

    // Refunds: unknown charge, above what was charged, malformed id.
    let refund = RefundRequest {
        tenant_id: t.id().to_string(),
        entry_id: consumed.entry_id.clone(),
        amount: 11,
        idempotency_key: key(),
        reference: String::new(),
    };
    let above = credits()
        .refund(authed(refund.clone(), &t.platform))
        .await
        .unwrap_err();
    assert_error(&above, Code::FailedPrecondition, "REFUND_EXCEEDS_CHARGE");
    let unknown = credits()
        .refund(authed(
            RefundRequest {
                entry_id: uuid::Uuid::now_v7().to_string(),
                amount: 1,
                ..refund.clone()
            },
            &t.platform,
        ))
        .await;
    assert_error(&unknown.unwrap_err(), Code::NotFound, "ENTRY_NOT_FOUND");
    let malformed = credits()
        .refund(authed(
            RefundRequest {
                entry_id: "x".into(),
                amount: 0,
                ..refund
            },
            &t.platform,
        ))
        .await
        .unwrap_err();
    assert_bad_field(&malformed, "entry_id");
    assert_bad_field(&malformed, "amount");

    // Lists: a page size over the maximum, a reversed range, a foreign token.
    let list = credits()
        .list_ledger(authed(
            ListLedgerRequest {
                page_size: 1001,
                ..Default::default()
            },
            member,
        ))
        .await;
    assert_bad_field(&list.unwrap_err(), "page_size");
    let reversed = credits()
        .list_ledger(authed(
            ListLedgerRequest {
                start_time: Some(prost_types::Timestamp {
                    seconds: 2000,
                    nanos: 0,
                }),
                end_time: Some(prost_types::Timestamp {
                    seconds: 1000,
                    nanos: 0,
                }),
                ..Default::default()
            },
            member,
        ))
        .await;
    assert_bad_field(&reversed.unwrap_err(), "end_time");
    let token = credits()
        .list_ledger(authed(
            ListLedgerRequest {
                page_token: "forged.token".into(),
                ..Default::default()
            },
            member,
        ))
        .await;
    assert_bad_field(&token.unwrap_err(), "page_token");
    let tenant = credits()
        .get_account(authed(
            GetAccountRequest {
                tenant_id: "nope".into(),
            },
            member,
        ))
        .await;
    assert_bad_field(&tenant.unwrap_err(), "tenant_id");

    assert_eq!(t.ledger().await, before, "nothing was written");
    assert_eq!(t.reconcile().await.drift_total, 0);
}

#[tokio::test]
async fn billing_an_adjustment_corrects_the_balance_by_a_new_entry() {
    let t = BillingTenant::new(100).await;
    t.reserve(30, &key()).await.unwrap();
    let adjust = |amount: i64, reference: &str, token: &str| {
        let request = AdjustRequest {
            tenant_id: t.id().to_string(),
            amount,
            idempotency_key: key(),
            reference: reference.to_owned(),
        };
        let token = token.to_owned();
        async move { credits().adjust(authed(request, &token)).await }
    };
    let up = adjust(25, "ticket-1: double charge", &t.platform)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (up.kind(), up.amount, up.balance_after),
        (EntryKind::Adjustment, 25, 125)
    );
    let down = adjust(-20, "ticket-2", &t.platform)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(down.balance_after, 105);
    // Never below what is held: 75 are available.
    let short = adjust(-76, "ticket-3", &t.platform).await.unwrap_err();
    assert_error(&short, Code::FailedPrecondition, "INSUFFICIENT_CREDITS");
    assert_eq!(error_metadata(&short, "available").as_deref(), Some("75"));
    assert_bad_field(
        &adjust(0, "ticket-4", &t.platform).await.unwrap_err(),
        "amount",
    );
    assert_bad_field(&adjust(5, "", &t.platform).await.unwrap_err(), "reference");
    assert_code(
        &adjust(5, "mine", &t.tenant.owner_token).await,
        Code::PermissionDenied,
    );
    let account = t.account().await;
    assert_eq!(
        (account.balance, account.held, account.available),
        (105, 30, 75)
    );
    assert_eq!(t.reconcile().await.drift_total, 0);
}

#[tokio::test]
async fn reconciling_every_account_reads_them_all_in_batches() {
    // More accounts than two of Reconcile's batches (200 each), put in by hand
    // (balance 0, no ledger: no drift) and taken out again.
    let ids: Vec<uuid::Uuid> = (0..450).map(|_| uuid::Uuid::now_v7()).collect();
    let mut db = app().admin_db().await;
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM billing.accounts")
        .fetch_one(&mut db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO billing.accounts (tenant_id) SELECT unnest($1::uuid[])")
        .bind(&ids)
        .execute(&mut db)
        .await
        .unwrap();
    let every = credits()
        .reconcile(authed(ReconcileRequest::default(), &app().platform_token()))
        .await;
    sqlx::query("DELETE FROM billing.accounts WHERE tenant_id = ANY($1)")
        .bind(&ids)
        .execute(&mut db)
        .await
        .unwrap();
    let every = every.unwrap().into_inner();
    assert!(
        every.accounts_checked >= before + ids.len() as i64,
        "{} checked, {before} + {} there",
        every.accounts_checked,
        ids.len()
    );
    let ours: std::collections::HashSet<String> = ids.iter().map(|id| id.to_string()).collect();
    assert!(!every.drifted.iter().any(|d| ours.contains(&d.tenant_id)));
}

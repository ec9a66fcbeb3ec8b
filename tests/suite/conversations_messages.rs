//! Messages: idempotent appends under racing retries, paging in append
//! order, and the live tail (replay, follow, reconnect, fence, shutdown).

use std::collections::HashSet;
use std::time::Duration;

use mongodb::bson::doc;
use mosaic_proto::conversations::{
    EndConversationRequest, GetConversationRequest, ListMessagesRequest, TailMessagesRequest,
    TailMessagesResponse,
};
use mosaic_server::Shutdown;
use tonic::Code;
use tonic::Streaming;

use crate::conversations_support::{
    ConvTenant, append_request, conversations, messages, messages_on, raw_find,
};
use crate::harness::{app, assert_bad_field, assert_error, authed, suite_with};

#[tokio::test]
async fn an_append_is_idempotent_under_eight_racing_retries() {
    let t = ConvTenant::new().await;
    let c = t.start().await;
    let request = append_request(&c, "once");
    let calls = (0..8).map(|_| {
        let req = t.req(request.clone());
        async move { messages().append_message(req).await }
    });
    let answers = futures::future::join_all(calls).await;
    let ids: HashSet<String> = answers
        .into_iter()
        .map(|a| a.expect("every retry succeeds").into_inner().message_id)
        .collect();
    assert_eq!(ids.len(), 1, "every retry returns the first message");
    let stored = raw_find("messages", doc! { "conversation_id": &c.conversation_id }).await;
    assert_eq!(stored.len(), 1);
    let got = conversations()
        .get_conversation(t.req(GetConversationRequest {
            conversation_id: c.conversation_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.message_count, 1, "retries are not counted");

    // The same id with another message is refused.
    let mut other = request.clone();
    other.message.as_mut().unwrap().content = "something else".into();
    let e = messages().append_message(t.req(other)).await.unwrap_err();
    assert_bad_field(&e, "message.client_message_id");
    // A retry after the conversation ended still returns the first message.
    conversations()
        .end_conversation(t.req(EndConversationRequest {
            conversation_id: c.conversation_id.clone(),
        }))
        .await
        .unwrap();
    let late = messages()
        .append_message(t.req(request))
        .await
        .unwrap()
        .into_inner();
    assert!(ids.contains(&late.message_id));
}

#[tokio::test]
async fn messages_page_in_append_order() {
    let t = ConvTenant::new().await;
    let c = t.start().await;
    let mut appended = Vec::new();
    for i in 0..7 {
        appended.push(t.append(&c, &format!("m{i}")).await.message_id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = messages()
            .list_messages(t.req(ListMessagesRequest {
                conversation_id: c.conversation_id.clone(),
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        let seqs: Vec<i64> = page.messages.iter().map(|m| m.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        seen.extend(page.messages.into_iter().map(|m| m.message_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, appended);
    assert_eq!(pages, 3);
}

/// Reads until `n` messages arrived (or panics after 20 s of silence).
async fn read(stream: &mut Streaming<TailMessagesResponse>, n: usize) -> Vec<TailMessagesResponse> {
    let mut out = Vec::new();
    while out.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages arrived", out.len()))
            .expect("tail item")
            .expect("tail open");
        out.push(next);
    }
    out
}

#[tokio::test]
async fn a_tail_ends_when_its_token_runs_out() {
    let t = ConvTenant::new().await;
    let c = t.start().await;
    let short = app().token_for(
        Some(t.id),
        &format!("user:{}", uuid::Uuid::now_v7()),
        &["viewer"],
        Duration::from_secs(3),
    );
    let opened = std::time::Instant::now();
    let mut stream = messages()
        .tail_messages(authed(
            TailMessagesRequest {
                conversation_id: c.conversation_id.clone(),
                ..Default::default()
            },
            &short,
        ))
        .await
        .unwrap()
        .into_inner();
    let sent = t.append(&c, "before the token runs out").await;
    assert_eq!(ids(&read(&mut stream, 1).await), [sent.message_id]);
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the tail outlived its token")
        .expect_err("the tail ends with an error");
    assert_error(&end, Code::Unauthenticated, "TOKEN_EXPIRED");
    let lived = opened.elapsed();
    assert!(
        lived >= Duration::from_secs(1) && lived < Duration::from_secs(5),
        "{lived:?}"
    );
}

fn ids(items: &[TailMessagesResponse]) -> Vec<String> {
    items
        .iter()
        .map(|i| i.message.as_ref().unwrap().message_id.clone())
        .collect()
}

#[tokio::test]
async fn the_tail_replays_follows_and_resumes_without_gap_or_duplicate() {
    let t = ConvTenant::new().await;
    let c = t.start().await;
    let mut all = Vec::new();
    for i in 0..5 {
        all.push(t.append(&c, &format!("before {i}")).await.message_id);
    }
    let tail_req = |cursor: &str| {
        t.as_role(
            "viewer",
            TailMessagesRequest {
                conversation_id: c.conversation_id.clone(),
                cursor: cursor.to_owned(),
                ..Default::default()
            },
        )
    };
    // Appends race the tail's switch from replay to follow.
    let writer = {
        let (t, c) = (t.clone(), c.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..15 {
                ids.push(t.append(&c, &format!("during {i}")).await.message_id);
            }
            ids
        })
    };
    let mut stream = messages()
        .tail_messages(tail_req(""))
        .await
        .unwrap()
        .into_inner();
    let first = read(&mut stream, 20).await;
    all.extend(writer.await.unwrap());
    let got = ids(&first);
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), 20, "no duplicate");
    assert_eq!(
        got.iter().collect::<HashSet<_>>(),
        all.iter().collect::<HashSet<_>>(),
        "no gap"
    );
    assert_eq!(&got[..5], &all[..5], "the replay comes in append order");
    let last_cursor = first.last().unwrap().cursor.clone();
    drop(stream);

    // While disconnected, more arrive; the reconnect gets exactly those.
    let mut later = Vec::new();
    for i in 0..4 {
        later.push(t.append(&c, &format!("after {i}")).await.message_id);
    }
    let mut resumed = messages()
        .tail_messages(tail_req(&last_cursor))
        .await
        .unwrap()
        .into_inner();
    let again = read(&mut resumed, 4).await;
    assert_eq!(ids(&again), later);
    let one_more = t.append(&c, "live").await.message_id;
    assert_eq!(
        ids(&read(&mut resumed, 1).await),
        std::slice::from_ref(&one_more)
    );
    // Nothing else is pending on the stream.
    assert!(
        tokio::time::timeout(Duration::from_millis(700), resumed.message())
            .await
            .is_err()
    );
    drop(resumed);

    // A cursor from the replay (the 3rd message) resumes after it.
    let from_replay = first[2].cursor.clone();
    let mut replay = messages()
        .tail_messages(tail_req(&from_replay))
        .await
        .unwrap()
        .into_inner();
    let rest: Vec<String> = all[3..]
        .iter()
        .chain(&later)
        .chain([&one_more])
        .cloned()
        .collect();
    let replayed = ids(&read(&mut replay, rest.len()).await);
    assert_eq!(
        replayed.iter().collect::<HashSet<_>>(),
        rest.iter().collect::<HashSet<_>>()
    );
    assert_eq!(replayed.len(), rest.len());
}

#[tokio::test]
async fn a_tail_is_fenced_to_its_tenant_and_conversation() {
    let a = ConvTenant::new().await;
    let b = ConvTenant::new().await;
    let ca = a.start().await;
    let ca2 = a.start().await;
    let cb = b.start().await;
    let mut b_tail = messages()
        .tail_messages(b.req(TailMessagesRequest {
            conversation_id: cb.conversation_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let mut a_tail = messages()
        .tail_messages(a.req(TailMessagesRequest {
            conversation_id: ca.conversation_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    a.append(&ca2, "other conversation").await;
    let mine = a.append(&ca, "for a").await;
    let got = read(&mut a_tail, 1).await;
    assert_eq!(ids(&got), [mine.message_id]);
    assert!(
        tokio::time::timeout(Duration::from_millis(800), b_tail.message())
            .await
            .is_err(),
        "B's tail saw nothing of A"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), a_tail.message())
            .await
            .is_err(),
        "A's tail saw nothing of A's other conversation"
    );
    // B with A's conversation id: NOT_FOUND (covered for every RPC in
    // conversations_api); with A's cursor: refused.
    let stolen = messages()
        .tail_messages(b.req(TailMessagesRequest {
            conversation_id: cb.conversation_id.clone(),
            cursor: got[0].cursor.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_bad_field(&stolen, "cursor");
}

#[tokio::test]
async fn an_open_tail_ends_with_unavailable_on_shutdown() {
    let t = ConvTenant::new().await;
    let c = t.start().await;
    t.append(&c, "one").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Shutdown::new();
    let trigger = stop.clone();
    let env = app()
        .env
        .clone()
        .with("MOSAIC_SHUTDOWN_TIMEOUT_SECS", "3")
        .with("MOSAIC_DB_MAX_CONNECTIONS", "2")
        .with("MOSAIC_DB_READ_CONNECTIONS", "1");
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let result = mosaic::run(&env, listener, stop.clone(), stop.cancelled()).await;
        let _ = done_tx.send(result);
    });
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut tail = messages_on(channel)
        .tail_messages(t.req(TailMessagesRequest {
            conversation_id: c.conversation_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    read(&mut tail, 1).await;
    let asked = std::time::Instant::now();
    trigger.trigger();
    let end = tokio::time::timeout(Duration::from_secs(3), tail.message())
        .await
        .expect("the tail ended within the drain deadline");
    let status = end.expect_err("the tail ends with a status");
    assert_error(&status, Code::Unavailable, "SHUTTING_DOWN");
    tokio::time::timeout(Duration::from_secs(5), done_rx)
        .await
        .expect("the server stopped")
        .unwrap()
        .unwrap();
    assert!(asked.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_ended_and_resumes_from_its_cursor() {
    let t = ConvTenant::new().await;
    let c = t.start().await;
    let channel = suite_with(
        app()
            .env
            .clone()
            .with("MOSAIC_CONVERSATIONS_TAIL_STALL_MS", "500"),
    )
    .await;
    let mut tail = messages_on(channel.clone())
        .tail_messages(t.req(TailMessagesRequest {
            conversation_id: c.conversation_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    // Far more than the buffer (64) and HTTP/2's flow-control windows (a few
    // MiB) hold, unread.
    let big = "x".repeat(30 * 1024);
    let mut appended = Vec::new();
    for _ in 0..250 {
        appended.push(t.append(&c, &big).await.message_id);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut received = Vec::new();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), tail.message())
            .await
            .expect("the tail answers")
        {
            Ok(Some(item)) => received.push(item),
            Ok(None) => panic!("the tail ended without a status"),
            Err(status) => break status,
        }
    };
    assert_error(&status, Code::Aborted, "TAIL_BEHIND");
    assert!(
        !received.is_empty() && received.len() < 200,
        "the server held a bounded number for the stalled client: {}",
        received.len()
    );
    assert_eq!(ids(&received), appended[..received.len()]);
    // Its last cursor picks up exactly after the last one it got.
    let mut resumed = messages()
        .tail_messages(t.req(TailMessagesRequest {
            conversation_id: c.conversation_id.clone(),
            cursor: received.last().unwrap().cursor.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let rest = read(&mut resumed, appended.len() - received.len()).await;
    assert_eq!(ids(&rest), appended[received.len()..]);
}

//! Row 9: malformed bytes on a raw HTTP/2 connection to GetTenant: a frame
//! whose message does not decode, a truncated frame, invalid UTF-8 in a
//! string field, a wrong content-type, a message over the size limit, a
//! length prefix of 4 GiB, and a compressed frame (compression is not
//! enabled). Bars: each answered with a client-error status (never
//! INTERNAL or UNKNOWN; HTTP 415 counts for the content-type), the same
//! connection still serves a valid call after each, the server's RSS grows
//! less than 64 MiB.

use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::Profile;
use crate::card::Row;
use crate::deps::{Deps, set};
use crate::server::Mosaic;

const METHOD: &str = "/mosaic.identity.v1.TenantService/GetTenant";
const LIMIT: usize = 64 * 1024;

/// `GetTenantRequest { tenant_id }` encoded by hand.
fn get_tenant(tenant_id: &[u8]) -> Vec<u8> {
    let mut out = vec![0x0a];
    let mut len = tenant_id.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(tenant_id);
    out
}

/// A gRPC length-prefixed frame.
fn frame(compressed: bool, declared: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(compressed)];
    out.extend_from_slice(&declared.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn whole(payload: &[u8]) -> Vec<u8> {
    frame(false, payload.len() as u32, payload)
}

struct Case {
    name: &'static str,
    content_type: &'static str,
    encoding: Option<&'static str>,
    body: Vec<u8>,
}

/// What the server answered: the HTTP status and the grpc-status (from the
/// headers of a trailers-only answer, or the trailers).
async fn call(
    send: &mut h2::client::SendRequest<Bytes>,
    port: u16,
    token: &str,
    case: &Case,
) -> anyhow::Result<(u16, Option<i32>, String)> {
    let mut request = http::Request::post(format!("http://127.0.0.1:{port}{METHOD}"))
        .header("content-type", case.content_type)
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"));
    if let Some(encoding) = case.encoding {
        request = request.header("grpc-encoding", encoding);
    }
    let request = request.body(())?;
    *send = send.clone().ready().await?;
    let (response, mut stream) = send.send_request(request, false)?;
    // Large bodies go in pieces within the flow-control window.
    let mut rest = Bytes::from(case.body.clone());
    while !rest.is_empty() {
        stream.reserve_capacity(rest.len().min(16 * 1024));
        let capacity = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(n)) if n > 0 => n,
            Some(Ok(_)) => continue,
            // The server answered early and reset the stream: fine, read its answer.
            _ => break,
        };
        let chunk = rest.split_to(capacity.min(rest.len()));
        if stream.send_data(chunk, false).is_err() {
            break;
        }
    }
    let _ = stream.send_data(Bytes::new(), true);
    let response = tokio::time::timeout(Duration::from_secs(10), response).await??;
    let http_status = response.status().as_u16();
    let header = |map: &http::HeaderMap, name: &str| {
        map.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut grpc = header(response.headers(), "grpc-status");
    let mut message = header(response.headers(), "grpc-message").unwrap_or_default();
    let mut body = response.into_body();
    if grpc.is_none() {
        while let Some(data) = body.data().await {
            let data = data?;
            let _ = body.flow_control().release_capacity(data.len());
        }
        if let Some(trailers) = body.trailers().await? {
            grpc = header(&trailers, "grpc-status");
            message = header(&trailers, "grpc-message").unwrap_or_default();
        }
    }
    Ok((http_status, grpc.and_then(|s| s.parse().ok()), message))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn code_name(code: i32) -> String {
    format!("{:?}", tonic::Code::from_i32(code))
}

pub(crate) async fn run(deps: &Deps, _p: Profile) -> anyhow::Result<Vec<Row>> {
    let mut env = deps.env();
    set(&mut env, "MOSAIC_MAX_MESSAGE_BYTES", LIMIT.to_string());
    let mosaic = Mosaic::start(&env).await?;
    let tenant = mosaic.new_tenant(&deps.tokens, 0).await?;
    let token = deps.tokens.owner(tenant);
    let pid = mosaic.pid().unwrap_or_default();
    let valid = Case {
        name: "valid",
        content_type: "application/grpc",
        encoding: None,
        body: whole(&get_tenant(tenant.to_string().as_bytes())),
    };
    let grpc = "application/grpc";
    let cases = [
        Case {
            name: "does not decode",
            content_type: grpc,
            encoding: None,
            body: whole(&[0xff; 12]),
        },
        Case {
            name: "truncated frame",
            content_type: grpc,
            encoding: None,
            body: frame(false, 64, &get_tenant(b"abc")),
        },
        Case {
            name: "invalid UTF-8",
            content_type: grpc,
            encoding: None,
            body: whole(&get_tenant(&[0xc3, 0x28, 0xff, 0xfe])),
        },
        Case {
            name: "wrong content-type",
            content_type: "text/plain",
            encoding: None,
            body: whole(&get_tenant(tenant.to_string().as_bytes())),
        },
        Case {
            name: "over the limit",
            content_type: grpc,
            encoding: None,
            body: whole(&get_tenant(&vec![b'a'; 4 * LIMIT])),
        },
        Case {
            name: "4 GiB length prefix",
            content_type: grpc,
            encoding: None,
            body: frame(false, u32::MAX, &[0u8; 16]),
        },
        Case {
            name: "compressed (gzip) frame",
            content_type: grpc,
            encoding: Some("gzip"),
            body: frame(
                true,
                20,
                &[
                    0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
        },
    ];
    let tcp = TcpStream::connect(("127.0.0.1", mosaic.port)).await?;
    let (mut send, connection) = h2::client::handshake(tcp).await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let (_, ok, _) = call(&mut send, mosaic.port, &token, &valid).await?;
    anyhow::ensure!(ok == Some(0), "a valid raw call failed: {ok:?}");
    let rss_before = rss_kib(pid);
    let mut rows = Vec::new();
    for case in &cases {
        let answer = call(&mut send, mosaic.port, &token, case).await;
        let after = call(&mut send, mosaic.port, &token, &valid).await;
        let usable = matches!(after, Ok((_, Some(0), _)));
        let (figure, client_error) = match &answer {
            Ok((http, Some(code), message)) => (
                format!("HTTP {http}, {} \"{message}\"", code_name(*code)),
                !matches!(*code, 0 | 2 | 13 | 14),
            ),
            Ok((http, None, _)) => (format!("HTTP {http}, no grpc-status"), *http == 415),
            Err(e) => (format!("no answer: {e:#}"), false),
        };
        rows.push((case.name, figure, client_error, usable));
    }
    let rss_after = rss_kib(pid);
    driver.abort();
    let growth_mib = rss_after.saturating_sub(rss_before) as f64 / 1024.0;
    let out: Vec<Row> = rows
        .iter()
        .enumerate()
        .map(|(i, (name, figure, client_error, usable))| {
            Row::new(
                &format!("9{}", (b'a' + i as u8) as char),
                format!("malformed request: {name}"),
                format!("{figure}; connection usable after: {usable}"),
                "a client-error status (not INTERNAL/UNKNOWN/UNAVAILABLE), the connection still serves",
                *client_error && *usable,
            )
        })
        .chain(std::iter::once(Row::new(
            "9h",
            "malformed requests: server memory",
            format!("RSS {:.1} MiB before, {:.1} MiB after ({growth_mib:+.1} MiB)", rss_before as f64 / 1024.0, rss_after as f64 / 1024.0),
            "grows < 64 MiB",
            growth_mib < 64.0,
        )))
        .collect();
    Ok(out)
}

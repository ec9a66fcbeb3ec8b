//! Calling another Mosaic service: [`Propagate`](crate::Propagate) carries
//! the caller's context out, and [`peer_error`] turns the peer's answer back
//! into an [`ApiError`] for our own caller.
//!
//! ```text
//! let mut agents = AgentServiceClient::with_interceptor(channel.clone(), ctx.propagate());
//! let agent = agents.get_agent(request).await.map_err(|s| peer_error("agents", s))?;
//! ```
//!
//! What the caller sees of a peer's error:
//! - the client's own errors (NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION,
//!   ALREADY_EXISTS, ABORTED, OUT_OF_RANGE, PERMISSION_DENIED, UNAUTHENTICATED,
//!   RESOURCE_EXHAUSTED) pass through with their reason, fields and retry
//!   delay: they are about the request the caller made;
//! - UNAVAILABLE, CANCELLED and a refused connection become UNAVAILABLE
//!   `PEER_UNAVAILABLE` (safe to retry); DEADLINE_EXCEEDED stays itself;
//! - anything else (INTERNAL, UNKNOWN, DATA_LOSS, UNIMPLEMENTED) is our
//!   fault as far as the caller knows: INTERNAL, with the peer's status logged.

use mosaic_api::ApiError;
use tonic::{Code, Status};

/// Reason of UNAVAILABLE when a peer service is down or overloaded.
pub const PEER_UNAVAILABLE: &str = "PEER_UNAVAILABLE";

/// The error our caller gets when `peer` (a service name, for the message
/// and the log) answered `status`.
#[track_caller]
pub fn peer_error(peer: &str, status: Status) -> ApiError {
    match status.code() {
        Code::NotFound
        | Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::Aborted
        | Code::OutOfRange
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::ResourceExhausted => ApiError::from_status(&status),
        Code::Unavailable | Code::Cancelled => {
            tracing::debug!(peer, status = %status.message(), "peer unavailable");
            ApiError::unavailable(
                PEER_UNAVAILABLE,
                format!("the {peer} service is unavailable; retry shortly"),
            )
        }
        Code::DeadlineExceeded => {
            ApiError::deadline_exceeded(format!("the {peer} service did not answer in time"))
        }
        _ => ApiError::internal(format_args!(
            "{peer} answered {:?}: {}",
            status.code(),
            status.message()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_pass_through_and_server_errors_do_not() {
        let not_found = ApiError::not_found("AGENT_NOT_FOUND", "agent not found");
        let seen = peer_error("agents", Status::from(not_found));
        assert_eq!(
            (seen.code(), seen.reason()),
            (Code::NotFound, "AGENT_NOT_FOUND")
        );

        let down = peer_error("agents", Status::unavailable("connection refused"));
        assert_eq!(
            (down.code(), down.reason()),
            (Code::Unavailable, PEER_UNAVAILABLE)
        );
        assert!(
            !down.message().contains("refused"),
            "transport detail stays in the log"
        );

        let bug = peer_error("agents", Status::internal("relation agents does not exist"));
        assert_eq!(bug.code(), Code::Internal);
        assert_eq!(bug.message(), "internal error");

        let slow = peer_error("crm", Status::deadline_exceeded("late"));
        assert_eq!(slow.code(), Code::DeadlineExceeded);
    }
}

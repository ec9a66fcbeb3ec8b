//! [`ApiError`]: a gRPC code, a machine-readable reason and, for bad input, the
//! fields at fault. Internal causes are logged here and never sent to clients.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `google.rpc.ErrorInfo.domain` of every Mosaic error.
pub const DOMAIN: &str = "mosaic";

/// Result alias used by handlers and storage code.
pub type ApiResult<T> = Result<T, ApiError>;

/// One `google.rpc.BadRequest.FieldViolation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// An error on its way to a client. Construct with the named constructors; each
/// documents its code.
#[derive(Debug, Clone)]
pub struct ApiError {
    code: Code,
    reason: String,
    message: String,
    violations: Vec<FieldViolation>,
    retry_after: Option<Duration>,
    /// `google.rpc.ErrorInfo.metadata`: facts a client acts on (billing's
    /// `available` beside `INSUFFICIENT_CREDITS`).
    metadata: Vec<(String, String)>,
}

impl ApiError {
    fn new(code: Code, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            message: message.into(),
            violations: Vec::new(),
            retry_after: None,
            metadata: Vec::new(),
        }
    }

    /// Adds one `ErrorInfo.metadata` entry.
    pub fn with_metadata(mut self, key: &str, value: impl std::fmt::Display) -> Self {
        self.metadata.push((key.to_owned(), value.to_string()));
        self
    }

    /// The `ErrorInfo.metadata` entries.
    pub fn metadata(&self) -> &[(String, String)] {
        &self.metadata
    }

    /// INVALID_ARGUMENT, reason `INVALID_ARGUMENT`, one field named.
    pub fn invalid_argument(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut v = Violations::new();
        v.add(field, description);
        v.into_error()
    }

    /// INVALID_ARGUMENT, reason `MALFORMED_REQUEST`: bytes that do not decode
    /// as the request message, where no field can be named.
    pub fn malformed_request(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, "MALFORMED_REQUEST", message)
    }

    /// NOT_FOUND with a reason such as `TENANT_NOT_FOUND`. Also what another
    /// tenant's resource looks like: its existence is never revealed.
    pub fn not_found(reason: &str, message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, reason, message)
    }

    /// ALREADY_EXISTS with the field whose value is taken.
    pub fn already_exists(reason: &str, field: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(Code::AlreadyExists, reason, message);
        e.violations.push(FieldViolation {
            field: field.to_owned(),
            description: "already in use".to_owned(),
        });
        e
    }

    /// ABORTED: a stale etag or a lost race; the client may re-read and retry.
    pub fn aborted(reason: &str, message: impl Into<String>) -> Self {
        Self::new(Code::Aborted, reason, message)
    }

    /// FAILED_PRECONDITION: the request is valid but the resource's state forbids it.
    pub fn failed_precondition(reason: &str, message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, reason, message)
    }

    /// OUT_OF_RANGE: a position past what the resource holds (a stream
    /// cursor older than the history kept).
    pub fn out_of_range(reason: &str, message: impl Into<String>) -> Self {
        Self::new(Code::OutOfRange, reason, message)
    }

    /// UNAUTHENTICATED: no valid credential.
    pub fn unauthenticated(reason: &str, message: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, reason, message)
    }

    /// PERMISSION_DENIED: authenticated, but the role is too weak.
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(Code::PermissionDenied, "PERMISSION_DENIED", message)
    }

    /// PERMISSION_DENIED with a reason of its own (`TENANT_INACTIVE`).
    pub fn permission_denied_with(reason: &str, message: impl Into<String>) -> Self {
        Self::new(Code::PermissionDenied, reason, message)
    }

    /// RESOURCE_EXHAUSTED with a retry delay (`google.rpc.RetryInfo`).
    pub fn resource_exhausted(reason: &str, retry_after: Duration) -> Self {
        let mut e = Self::new(
            Code::ResourceExhausted,
            reason,
            "rate limit exceeded, retry later",
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// DATA_LOSS: stored data is unreadable (a ciphertext that does not
    /// authenticate). Never retried: the data itself is at fault.
    pub fn data_loss(reason: &str, message: impl Into<String>) -> Self {
        Self::new(Code::DataLoss, reason, message)
    }

    /// UNAVAILABLE: a dependency is down or saturated; safe to retry.
    pub fn unavailable(reason: &str, message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, reason, message)
    }

    /// DEADLINE_EXCEEDED.
    pub fn deadline_exceeded(message: impl Into<String>) -> Self {
        Self::new(Code::DeadlineExceeded, "DEADLINE_EXCEEDED", message)
    }

    /// INTERNAL. The cause is logged with its context; the client sees only
    /// "internal error".
    #[track_caller]
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let at = std::panic::Location::caller();
        tracing::error!(error = %cause, at = %at, "internal error");
        Self::new(Code::Internal, "INTERNAL", "internal error")
    }

    pub fn code(&self) -> Code {
        self.code
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn violations(&self) -> &[FieldViolation] {
        &self.violations
    }

    /// Prefixes every violated field with `parent.` (a nested message).
    pub fn within(mut self, parent: &str) -> Self {
        for v in &mut self.violations {
            v.field = format!("{parent}.{}", v.field);
        }
        self
    }
}

impl ApiError {
    /// The error a peer service answered with, read back from its status:
    /// code, `ErrorInfo` reason, message, `BadRequest` fields and
    /// `RetryInfo` delay. The decoding half of `From<ApiError> for Status`,
    /// for service-to-service calls (see `mosaic_tenant::client`, which
    /// decides what a caller of ours should see).
    pub fn from_status(status: &Status) -> Self {
        let details = status.get_error_details();
        let reason = details
            .error_info()
            .map(|info| info.reason.clone())
            .unwrap_or_else(|| format!("{:?}", status.code()).to_uppercase());
        let mut metadata: Vec<(String, String)> = details
            .error_info()
            .map(|info| info.metadata.clone().into_iter().collect())
            .unwrap_or_default();
        metadata.sort();
        let violations: Vec<FieldViolation> = details
            .bad_request()
            .map(|bad| {
                bad.field_violations
                    .iter()
                    .map(|v| FieldViolation {
                        field: v.field.clone(),
                        description: v.description.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Our own statuses append the violations to the message; drop that
        // tail so it is not repeated when the error is sent on.
        let message = match status.message().rsplit_once(" (") {
            Some((head, _)) if !violations.is_empty() => head.to_owned(),
            _ => status.message().to_owned(),
        };
        Self {
            code: status.code(),
            reason,
            message,
            violations,
            retry_after: details.retry_info().and_then(|retry| retry.retry_delay),
            metadata,
        }
    }

    /// The `RetryInfo` delay, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let mut details = ErrorDetails::with_error_info(
            e.reason.clone(),
            DOMAIN,
            e.metadata
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        );
        if !e.violations.is_empty() {
            details.set_bad_request(
                e.violations
                    .iter()
                    .map(|v| tonic_types::FieldViolation::new(&v.field, &v.description))
                    .collect::<Vec<_>>(),
            );
        }
        if let Some(d) = e.retry_after {
            details.set_retry_info(Some(d));
        }
        let message = if e.violations.is_empty() {
            e.message
        } else {
            let fields: Vec<String> = e
                .violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect();
            format!("{} ({})", e.message, fields.join("; "))
        };
        Status::with_error_details(e.code, message, details)
    }
}

/// Collects every bad field of a request, so a client learns all of them at once.
/// An error that is not about a field (a parse that also looked something up
/// and found it missing, or failed) is kept as it is: the first such error is
/// what [`Violations::finish`] returns, with its own code.
#[derive(Debug, Default)]
pub struct Violations {
    fields: Vec<FieldViolation>,
    other: Option<ApiError>,
}

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.fields.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Keeps the value of a successful parse; records the violations of a failed one.
    pub fn take<T>(&mut self, r: ApiResult<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) if e.code == Code::InvalidArgument && !e.violations.is_empty() => {
                self.fields.extend(e.violations);
                None
            }
            Err(e) if e.code == Code::InvalidArgument => {
                self.fields.push(FieldViolation {
                    field: String::new(),
                    description: e.message,
                });
                None
            }
            Err(e) => {
                self.other.get_or_insert(e);
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.other.is_none()
    }

    fn into_error(self) -> ApiError {
        if let Some(other) = self.other {
            return other;
        }
        let mut e = ApiError::new(Code::InvalidArgument, "INVALID_ARGUMENT", "invalid request");
        e.violations = self.fields;
        e
    }

    /// `Ok(())` when nothing was recorded; else the first error that is not
    /// about a field, as it was; else one INVALID_ARGUMENT naming every field.
    pub fn finish(self) -> ApiResult<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.into_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_that_is_not_about_a_field_keeps_its_code() {
        let missing: ApiResult<()> = Err(ApiError::not_found("AGENT_NOT_FOUND", "agent not found"));
        let bad: ApiResult<()> = Err(ApiError::invalid_argument("name", "required"));
        let e = (bad, missing).all_ok().unwrap_err();
        assert_eq!(e.code, Code::NotFound);
        assert_eq!(e.reason, "AGENT_NOT_FOUND");
        let (one, two): (ApiResult<()>, ApiResult<()>) = (
            Err(ApiError::invalid_argument("a", "required")),
            Err(ApiError::invalid_argument("b", "required")),
        );
        let e = (one, two).all_ok().unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
        let fields: Vec<_> = e.violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["a", "b"]);
    }

    #[test]
    fn status_carries_reason_and_fields() {
        let mut v = Violations::new();
        v.add("display_name", "must not be empty");
        v.add("plan", "unknown value 9");
        let status: Status = v.finish().unwrap_err().into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "INVALID_ARGUMENT");
        assert_eq!(details.error_info().unwrap().domain, "mosaic");
        let fields: Vec<_> = details
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|f| f.field.clone())
            .collect();
        assert_eq!(fields, ["display_name", "plan"]);
    }

    #[test]
    fn error_info_metadata_travels_and_reads_back() {
        let sent = ApiError::failed_precondition("INSUFFICIENT_CREDITS", "short")
            .with_metadata("available", 7)
            .with_metadata("requested", 9);
        let status = Status::from(sent);
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(
            info.metadata.get("available").map(String::as_str),
            Some("7")
        );
        let back = ApiError::from_status(&status);
        assert_eq!(
            back.metadata(),
            [
                ("available".to_owned(), "7".to_owned()),
                ("requested".to_owned(), "9".to_owned())
            ]
        );
    }

    #[test]
    fn a_status_reads_back_into_the_same_error() {
        let mut v = Violations::new();
        v.add("deal.stage", "unknown value 9");
        let sent = v.finish().unwrap_err();
        let back = ApiError::from_status(&Status::from(sent.clone()));
        assert_eq!(back.code(), Code::InvalidArgument);
        assert_eq!(back.reason(), "INVALID_ARGUMENT");
        assert_eq!(back.message(), sent.message());
        assert_eq!(back.violations(), sent.violations());

        let limited = ApiError::resource_exhausted("RATE_LIMITED", Duration::from_millis(250));
        let back = ApiError::from_status(&Status::from(limited));
        assert_eq!(back.retry_after(), Some(Duration::from_millis(250)));

        let bare = ApiError::from_status(&Status::unavailable("down"));
        assert_eq!(
            (bare.code(), bare.reason(), bare.message()),
            (Code::Unavailable, "UNAVAILABLE", "down")
        );
    }

    #[test]
    fn internal_hides_the_cause() {
        let status: Status = ApiError::internal("relation \"secret_table\" does not exist").into();
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }
}

/// Checks several parsed fields at once: all values, or one INVALID_ARGUMENT
/// naming every bad field.
///
/// ```text
/// let (size, after) = (parse::page_size("page_size", n), page::decode(&b, t)).all_ok()?;
/// ```
pub trait AllOk {
    type Out;
    fn all_ok(self) -> ApiResult<Self::Out>;
}

macro_rules! impl_all_ok {
    ($($t:ident $v:ident),+) => {
        impl<$($t),+> AllOk for ($(ApiResult<$t>,)+) {
            type Out = ($($t,)+);
            fn all_ok(self) -> ApiResult<Self::Out> {
                let ($($v,)+) = self;
                let mut violations = Violations::new();
                $(let $v = violations.take($v);)+
                violations.finish()?;
                // finish() succeeded, so every take() kept its value.
                Ok(($($v.expect("no violations recorded"),)+))
            }
        }
    };
}

impl_all_ok!(A a);
impl_all_ok!(A a, B b);
impl_all_ok!(A a, B b, C c);
impl_all_ok!(A a, B b, C c, D d);
impl_all_ok!(A a, B b, C c, D d, E e);
impl_all_ok!(A a, B b, C c, D d, E e, F f);
impl_all_ok!(A a, B b, C c, D d, E e, F f, G g);
impl_all_ok!(A a, B b, C c, D d, E e, F f, G g, H h);

//! SQLSTATE → gRPC. SQL text and driver messages are logged, never returned.

use mosaic_api::ApiError;

/// A named constraint a service maps to a client error: the field at fault and
/// the reason (`CONTACT_EMAIL_TAKEN`, ...).
#[derive(Debug, Clone, Copy)]
pub struct Constraint {
    pub name: &'static str,
    pub field: &'static str,
    pub reason: &'static str,
}

/// Maps a driver error with no service-specific constraints.
#[track_caller]
pub fn db_error(e: sqlx::Error) -> ApiError {
    db_error_with(e, &[])
}

/// Maps a driver error; a violated constraint listed in `constraints` names its field.
#[track_caller]
pub fn db_error_with(e: sqlx::Error, constraints: &[Constraint]) -> ApiError {
    match &e {
        sqlx::Error::PoolTimedOut => {
            tracing::warn!("database pool exhausted");
            return ApiError::unavailable("DB_UNAVAILABLE", "the database is busy; retry shortly");
        }
        sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
            tracing::warn!(error = %e, "database unreachable");
            return ApiError::unavailable(
                "DB_UNAVAILABLE",
                "the database is unreachable; retry shortly",
            );
        }
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let constraint = db
                .constraint()
                .and_then(|name| constraints.iter().find(|c| c.name == name));
            match code.as_str() {
                // unique_violation
                "23505" => {
                    return match constraint {
                        Some(c) => ApiError::already_exists(
                            c.reason,
                            c.field,
                            format!("{} is already in use", c.field),
                        ),
                        None => ApiError::already_exists(
                            "ALREADY_EXISTS",
                            "",
                            "the resource already exists",
                        ),
                    };
                }
                // foreign_key_violation: a referenced row is missing (for this tenant)
                "23503" => {
                    return match constraint {
                        Some(c) => {
                            ApiError::not_found(c.reason, format!("{} does not exist", c.field))
                        }
                        None => ApiError::failed_precondition(
                            "REFERENCE_VIOLATION",
                            "a referenced resource does not exist or is still referenced",
                        ),
                    };
                }
                // check_violation, not_null_violation, string too long, bad text representation
                "23514" | "23502" | "22001" | "22P02" | "22P05" | "22021" | "22003" | "22007"
                | "22008" => {
                    return match constraint {
                        Some(c) => ApiError::invalid_argument(c.field, "out of range"),
                        None => {
                            tracing::warn!(error = %e, sqlstate = %code, "unmapped data error");
                            ApiError::invalid_argument("", "a value is out of range")
                        }
                    };
                }
                // serialization_failure, deadlock_detected
                "40001" | "40P01" => {
                    return ApiError::aborted(
                        "CONCURRENT_UPDATE",
                        "a concurrent update interfered; retry",
                    );
                }
                // query_canceled (statement_timeout)
                "57014" => {
                    return ApiError::deadline_exceeded("the database statement took too long");
                }
                // too_many_connections, admin/crash shutdown, cannot_connect_now
                "53300" | "57P01" | "57P02" | "57P03" => {
                    return ApiError::unavailable(
                        "DB_UNAVAILABLE",
                        "the database is unavailable; retry shortly",
                    );
                }
                _ => {}
            }
        }
        _ => {}
    }
    ApiError::internal(format_args!("database: {e}"))
}

/// The connection is gone: an I/O error, or the server ending the session
/// (SQLSTATE class 08, or 57P01..57P03: terminated, crash, not accepting).
pub(crate) fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

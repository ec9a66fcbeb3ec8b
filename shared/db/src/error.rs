//! SQLSTATE → gRPC. SQL text and driver messages are logged, never returned.

use std::time::Duration;

use mosaic_api::ApiError;
use mosaic_core::LogEvery;

/// The SQLSTATE codes this crate maps (PostgreSQL appendix A).
pub mod sqlstate {
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const FOREIGN_KEY_VIOLATION: &str = "23503";
    pub const CHECK_VIOLATION: &str = "23514";
    pub const NOT_NULL_VIOLATION: &str = "23502";
    pub const STRING_DATA_RIGHT_TRUNCATION: &str = "22001";
    pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
    pub const UNTRANSLATABLE_CHARACTER: &str = "22P05";
    pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
    pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
    pub const INVALID_DATETIME_FORMAT: &str = "22007";
    pub const DATETIME_FIELD_OVERFLOW: &str = "22008";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const DEADLOCK_DETECTED: &str = "40P01";
    pub const QUERY_CANCELED: &str = "57014";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CRASH_SHUTDOWN: &str = "57P02";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    /// "cached plan must not change result type" (a migration changed a prepared SELECT).
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
    /// Classes: connection exceptions (`08...`) and operator intervention (`57P..`).
    pub const CONNECTION_EXCEPTION_CLASS: &str = "08";
    pub const OPERATOR_INTERVENTION_SHUTDOWN: &str = "57P";
}

use sqlstate::*;

/// A named constraint a service maps to a client error: the field at fault and
/// the reason (`CONTACT_EMAIL_TAKEN`, ...).
#[derive(Debug, Clone, Copy)]
pub struct Constraint {
    pub name: &'static str,
    pub field: &'static str,
    pub reason: &'static str,
}

/// How often an outage's cause is logged: while the database is down every
/// call fails the same way, and one line per call (1,500 in a 3 s restart
/// under load) would bury everything else. Each cause is said once per
/// interval, with how many calls it held back (`suppressed`).
const OUTAGE_LOG_INTERVAL: Duration = Duration::from_secs(10);
static UNREACHABLE: LogEvery = LogEvery::new(OUTAGE_LOG_INTERVAL);
static POOL_EXHAUSTED: LogEvery = LogEvery::new(OUTAGE_LOG_INTERVAL);
static UNAVAILABLE: LogEvery = LogEvery::new(OUTAGE_LOG_INTERVAL);

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
            POOL_EXHAUSTED.log(|suppressed| tracing::warn!(suppressed, "database pool exhausted"));
            return ApiError::unavailable("DB_UNAVAILABLE", "the database is busy; retry shortly");
        }
        sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
            UNREACHABLE
                .log(|suppressed| tracing::warn!(error = %e, suppressed, "database unreachable"));
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
                UNIQUE_VIOLATION => {
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
                // A referenced row is missing (for this tenant).
                FOREIGN_KEY_VIOLATION => {
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
                CHECK_VIOLATION
                | NOT_NULL_VIOLATION
                | STRING_DATA_RIGHT_TRUNCATION
                | INVALID_TEXT_REPRESENTATION
                | UNTRANSLATABLE_CHARACTER
                | CHARACTER_NOT_IN_REPERTOIRE
                | NUMERIC_VALUE_OUT_OF_RANGE
                | INVALID_DATETIME_FORMAT
                | DATETIME_FIELD_OVERFLOW => {
                    return match constraint {
                        Some(c) => ApiError::invalid_argument(c.field, "out of range"),
                        None => {
                            tracing::warn!(error = %e, sqlstate = %code, "unmapped data error");
                            ApiError::invalid_argument("", "a value is out of range")
                        }
                    };
                }
                SERIALIZATION_FAILURE | DEADLOCK_DETECTED => {
                    return ApiError::aborted(
                        "CONCURRENT_UPDATE",
                        "a concurrent update interfered; retry",
                    );
                }
                // statement_timeout
                QUERY_CANCELED => {
                    return ApiError::deadline_exceeded("the database statement took too long");
                }
                TOO_MANY_CONNECTIONS | ADMIN_SHUTDOWN | CRASH_SHUTDOWN | CANNOT_CONNECT_NOW => {
                    UNAVAILABLE.log(|suppressed| {
                        tracing::warn!(sqlstate = %code, suppressed, "database unavailable");
                    });
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
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with(CONNECTION_EXCEPTION_CLASS)
                || c.starts_with(OPERATOR_INTERVENTION_SHUTDOWN)
        }),
        _ => false,
    }
}

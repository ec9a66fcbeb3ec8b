//! [`Mongo`]: one service's MongoDB database, connected lazily, with its
//! indexes created on first contact, a health probe, and the mapping of
//! driver errors to gRPC.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::{Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Database, IndexModel};
use mosaic_api::ApiError;
use mosaic_core::{ConfigError, Env, LogEvery, Probe, ProbeFuture, Secret};
use tokio::sync::OnceCell;

use crate::fenced::Fenced;
use crate::{TENANT_FIELD, audit};

/// The local default: SecantusDB (or any MongoDB) on loopback, database `mosaic`.
pub const DEFAULT_URL: &str = "mongodb://127.0.0.1:27017/mosaic";
/// Reason of UNAVAILABLE while MongoDB cannot be reached.
pub const MONGO_UNAVAILABLE: &str = "MONGO_UNAVAILABLE";
/// `MOSAIC_MONGODB_TIMEOUT_MS`: how long the driver looks for a usable
/// server, and waits to connect, before a call fails UNAVAILABLE (default 2000).
pub const TIMEOUT_MS: &str = "MOSAIC_MONGODB_TIMEOUT_MS";
/// How long one command may take when the caller set no deadline.
const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a service's documents live.
#[derive(Debug, Clone)]
pub struct MongoConfig {
    /// `MOSAIC_<SERVICE>_MONGODB_URL`; its path names the database
    /// (default `mosaic`).
    pub url: Secret,
    pub timeout: Duration,
}

impl MongoConfig {
    /// The variable naming `service`'s MongoDB URL.
    pub fn url_var(service: &str) -> String {
        format!("MOSAIC_{}_MONGODB_URL", service.to_uppercase())
    }

    pub fn from_env(env: &Env, service: &str) -> Result<Self, ConfigError> {
        let name = Self::url_var(service);
        let url = env.url(&name, DEFAULT_URL)?;
        let raw = url.expose();
        if !raw.starts_with("mongodb://") && !raw.starts_with("mongodb+srv://") {
            return Err(ConfigError::invalid_secret(
                &name,
                "a mongodb:// or mongodb+srv:// URL",
            ));
        }
        Ok(Self {
            url,
            timeout: env.millis(TIMEOUT_MS, 2000)?,
        })
    }
}

/// An index of a collection; its first key must be `tenant_id`.
#[derive(Debug, Clone)]
pub struct IndexSpec {
    pub name: &'static str,
    pub keys: Document,
    pub unique: bool,
    /// Only documents matching this are indexed (a partial index).
    pub partial: Option<Document>,
}

/// One service's database. Clones share the connection.
#[derive(Clone)]
pub struct Mongo(Arc<Inner>);

struct Inner {
    config: MongoConfig,
    app_name: String,
    database: OnceCell<Database>,
    /// Every collection's indexes, registered by [`Mongo::collection`].
    indexes: Mutex<Vec<(&'static str, Vec<IndexSpec>)>>,
    indexes_ready: AtomicBool,
    creating: tokio::sync::Mutex<()>,
    unreachable: LogEvery,
}

impl std::fmt::Debug for Mongo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mongo")
            .field("url", &self.0.config.url)
            .finish_non_exhaustive()
    }
}

impl Mongo {
    /// A handle that connects on first use; `app_name` shows in MongoDB's logs.
    pub fn connect_lazy(config: MongoConfig, app_name: &str) -> Self {
        Self(Arc::new(Inner {
            config,
            app_name: app_name.to_owned(),
            database: OnceCell::new(),
            indexes: Mutex::new(Vec::new()),
            indexes_ready: AtomicBool::new(false),
            creating: tokio::sync::Mutex::new(()),
            unreachable: LogEvery::new(Duration::from_secs(10)),
        }))
    }

    /// The collection `name`, fenced, with the indexes it must have (created
    /// before its first command; every key list must start with `tenant_id`).
    ///
    /// # Panics
    /// When an index does not start with `tenant_id`: a programming error
    /// found at startup.
    pub fn collection(&self, name: &'static str, indexes: Vec<IndexSpec>) -> Fenced {
        for index in &indexes {
            assert!(
                index.keys.keys().next().map(String::as_str) == Some(TENANT_FIELD),
                "index {} of {name} must start with {TENANT_FIELD}",
                index.name
            );
        }
        self.0
            .indexes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((name, indexes));
        Fenced::new(self.clone(), name)
    }

    /// The database, connecting the client on first use and creating the
    /// registered indexes once MongoDB answers.
    pub(crate) async fn database(&self) -> Result<&Database, ApiError> {
        let db = self
            .0
            .database
            .get_or_try_init(|| async {
                let mut options = ClientOptions::parse(self.0.config.url.expose())
                    .await
                    .map_err(|e| {
                        tracing::error!(error = %e, url = %self.0.config.url, "bad mongodb url");
                        ApiError::unavailable(
                            MONGO_UNAVAILABLE,
                            "the document store is unreachable",
                        )
                    })?;
                options.app_name = Some(self.0.app_name.clone());
                options.server_selection_timeout = Some(self.0.config.timeout);
                options.connect_timeout = Some(self.0.config.timeout);
                options.command_event_handler = Some(audit::handler());
                let name = options
                    .default_database
                    .clone()
                    .unwrap_or_else(|| "mosaic".to_owned());
                let client = Client::with_options(options).map_err(|e| self.error(e))?;
                Ok::<_, ApiError>(client.database(&name))
            })
            .await?;
        if !self.0.indexes_ready.load(Ordering::Acquire) {
            self.create_indexes(db).await?;
        }
        Ok(db)
    }

    async fn create_indexes(&self, db: &Database) -> Result<(), ApiError> {
        let _one = self.0.creating.lock().await;
        if self.0.indexes_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let wanted = self
            .0
            .indexes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for (collection, specs) in wanted {
            if specs.is_empty() {
                continue;
            }
            let models = specs.into_iter().map(|spec| {
                let options = IndexOptions::builder()
                    .name(spec.name.to_owned())
                    .unique(spec.unique.then_some(true))
                    .partial_filter_expression(spec.partial)
                    .build();
                IndexModel::builder()
                    .keys(spec.keys)
                    .options(options)
                    .build()
            });
            // Idempotent: an index that exists with the same definition is kept.
            db.collection::<Document>(collection)
                .create_indexes(models)
                .await
                .map_err(|e| self.error(e))?;
        }
        self.0.indexes_ready.store(true, Ordering::Release);
        tracing::info!(app = %self.0.app_name, "mongodb indexes ready");
        Ok(())
    }

    /// How long a command may take for a caller with `remaining` time left.
    pub(crate) fn budget(remaining: Option<Duration>) -> Duration {
        remaining.unwrap_or(DEFAULT_OPERATION_TIMEOUT)
    }

    /// Maps a driver error, logging an outage once per interval.
    pub(crate) fn error(&self, e: mongodb::error::Error) -> ApiError {
        let api = mongo_error(&e);
        if api.code() == tonic::Code::Unavailable {
            self.0.unreachable.log(|suppressed| {
                tracing::warn!(error = %e, suppressed, "mongodb unreachable");
            });
        } else if api.code() == tonic::Code::Internal {
            tracing::error!(error = %e, "mongodb command failed");
        }
        api
    }
}

impl Probe for Mongo {
    fn name(&self) -> &str {
        "mongodb"
    }

    fn check(&self) -> ProbeFuture<'_> {
        Box::pin(async move {
            let db = self.database().await.map_err(|e| e.message().to_owned())?;
            db.run_command(doc! { "ping": 1 })
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}

/// Whether `e` is a unique index refusing a second document with the same key.
pub fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    const DUPLICATE_KEY: i32 = 11000;
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(m) => m
            .write_errors
            .iter()
            .flatten()
            .any(|w| w.code == DUPLICATE_KEY),
        _ => false,
    }
}

/// A driver error as the caller sees it: UNAVAILABLE when MongoDB cannot be
/// reached (retry), DEADLINE_EXCEEDED when it ran out of time, INTERNAL
/// otherwise (the driver's message is logged, never returned).
pub fn mongo_error(e: &mongodb::error::Error) -> ApiError {
    const MAX_TIME_MS_EXPIRED: i32 = 50;
    let unavailable = || {
        ApiError::unavailable(
            MONGO_UNAVAILABLE,
            "the document store is unreachable; retry shortly",
        )
    };
    match e.kind.as_ref() {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Shutdown => unavailable(),
        ErrorKind::Command(c) if c.code == MAX_TIME_MS_EXPIRED => {
            ApiError::deadline_exceeded("the document store did not answer in time")
        }
        _ if e.contains_label("RetryableWriteError")
            || e.contains_label("TransientTransactionError") =>
        {
            unavailable()
        }
        _ => ApiError::internal(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_never_echoed() {
        let env = Env::from_pairs([("MOSAIC_CONVERSATIONS_MONGODB_URL", "postgres://u:pw@h/x")]);
        let e = MongoConfig::from_env(&env, "conversations").unwrap_err();
        assert_eq!(e.name(), "MOSAIC_CONVERSATIONS_MONGODB_URL");
        assert!(!e.to_string().contains("pw"));
        let ok =
            MongoConfig::from_env(&Env::from_pairs::<&str, &str>([]), "conversations").unwrap();
        assert_eq!(ok.url.expose(), DEFAULT_URL);
    }

    #[test]
    #[should_panic(expected = "must start with tenant_id")]
    fn an_index_without_the_tenant_first_is_refused() {
        let mongo = Mongo::connect_lazy(
            MongoConfig::from_env(&Env::from_pairs::<&str, &str>([]), "x").unwrap(),
            "test",
        );
        mongo.collection(
            "things",
            vec![IndexSpec {
                name: "by_name",
                keys: doc! { "name": 1, "tenant_id": 1 },
                unique: false,
                partial: None,
            }],
        );
    }
}

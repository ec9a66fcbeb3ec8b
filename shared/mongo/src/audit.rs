//! The fence, checked on the wire: every command a [`Mongo`](crate::Mongo)
//! client sends is inspected as the driver starts it. A command that reads
//! or writes documents without naming the tenant, an index that does not
//! start with `tenant_id`, or a command this crate never sends, is a
//! violation: logged as an error (command name and collection only, never
//! values) and kept for [`report`], which tests assert on after calling
//! every RPC.
//!
//! What counts as naming the tenant, per command:
//! - `find`, `count`, `distinct`: `filter` / `query` has `tenant_id`;
//! - `update`, `delete`: every statement's `q` has it;
//! - `findAndModify`: `query` has it;
//! - `insert`: every document has it;
//! - `aggregate`: the first stage is a `$match` on it, or a `$changeStream`
//!   followed by a `$match` on `fullDocument.tenant_id`;
//! - `createIndexes`: every index's first key is it.
//!
//! A `find` with the comment `mosaic:all-tenants:<why>` is the documented
//! cross-tenant scan of a sweeper (counted apart, not a violation).
//! Cursor and connection commands (`getMore`, `killCursors`, `ping`,
//! `hello`, ...) carry no filter and pass.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use mongodb::bson::{Bson, Document};
use mongodb::event::EventHandler;
use mongodb::event::command::CommandEvent;

use crate::TENANT_FIELD;
use crate::fenced::ALL_TENANTS_COMMENT;

/// Commands that carry no filter or documents.
const PASS: &[&str] = &[
    "getMore",
    "killCursors",
    "ping",
    "hello",
    "isMaster",
    "ismaster",
    "buildInfo",
    "endSessions",
    "saslStart",
    "saslContinue",
    "abortTransaction",
    "commitTransaction",
];
/// How many violations are kept (all are logged).
const KEEP: usize = 100;

/// What the audit saw in this process.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Commands seen, by name (`find`, `insert`, ...).
    pub commands: BTreeMap<String, u64>,
    /// Cross-tenant scans seen, by their `<why>`.
    pub all_tenant_scans: BTreeMap<String, u64>,
    /// The first violations: `<command> on <collection>: <what is wrong>`.
    pub violations: Vec<String>,
}

static SEEN: OnceLock<Mutex<Report>> = OnceLock::new();

fn seen() -> &'static Mutex<Report> {
    SEEN.get_or_init(Mutex::default)
}

/// Everything seen so far in this process.
pub fn report() -> Report {
    seen()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// The handler every [`Mongo`](crate::Mongo) client installs.
pub(crate) fn handler() -> EventHandler<CommandEvent> {
    EventHandler::callback(|event| {
        if let CommandEvent::Started(started) = event {
            record(&started.command_name, &started.command);
        }
    })
}

fn record(name: &str, command: &Document) {
    let verdict = check(name, command);
    let mut report = seen().lock().unwrap_or_else(PoisonError::into_inner);
    *report.commands.entry(name.to_owned()).or_default() += 1;
    match verdict {
        Verdict::Fenced => {}
        Verdict::AllTenants(why) => *report.all_tenant_scans.entry(why).or_default() += 1,
        Verdict::Violation(what) => {
            let collection = command.get_str(name).unwrap_or("?");
            let line = format!("{name} on {collection}: {what}");
            tracing::error!(violation = %line, "mongodb command outside the tenant fence");
            if report.violations.len() < KEEP {
                report.violations.push(line);
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Fenced,
    AllTenants(String),
    Violation(&'static str),
}

fn has_tenant(filter: Option<&Document>) -> bool {
    filter.is_some_and(|f| matches!(f.get(TENANT_FIELD), Some(Bson::String(t)) if !t.is_empty()))
}

fn docs<'a>(command: &'a Document, field: &str) -> Vec<&'a Document> {
    command
        .get_array(field)
        .map(|items| items.iter().filter_map(Bson::as_document).collect())
        .unwrap_or_default()
}

fn check(name: &str, command: &Document) -> Verdict {
    use Verdict::*;
    let all = |ok: bool, what| if ok { Fenced } else { Violation(what) };
    match name {
        _ if PASS.contains(&name) => Fenced,
        "find" => {
            if let Ok(comment) = command.get_str("comment")
                && let Some(why) = comment.strip_prefix(ALL_TENANTS_COMMENT)
            {
                return AllTenants(why.to_owned());
            }
            all(
                has_tenant(command.get_document("filter").ok()),
                "filter without tenant_id",
            )
        }
        "count" | "distinct" => all(
            has_tenant(command.get_document("query").ok()),
            "query without tenant_id",
        ),
        "findAndModify" => all(
            has_tenant(command.get_document("query").ok()),
            "query without tenant_id",
        ),
        "update" | "delete" => {
            let statements = docs(
                command,
                if name == "update" {
                    "updates"
                } else {
                    "deletes"
                },
            );
            all(
                !statements.is_empty()
                    && statements
                        .iter()
                        .all(|s| has_tenant(s.get_document("q").ok())),
                "a statement without tenant_id",
            )
        }
        "insert" => {
            let documents = docs(command, "documents");
            all(
                !documents.is_empty() && documents.iter().all(|d| has_tenant(Some(d))),
                "a document without tenant_id",
            )
        }
        "aggregate" => {
            let stages = docs(command, "pipeline");
            let first_match = |stage: Option<&&Document>, field: &str| {
                stage
                    .and_then(|s| s.get_document("$match").ok())
                    .is_some_and(|m| matches!(m.get(field), Some(Bson::String(t)) if !t.is_empty()))
            };
            let fenced = if stages
                .first()
                .is_some_and(|s| s.contains_key("$changeStream"))
            {
                first_match(stages.get(1), "fullDocument.tenant_id")
            } else {
                first_match(stages.first(), TENANT_FIELD)
            };
            all(fenced, "a pipeline that does not match tenant_id first")
        }
        "createIndexes" => {
            let indexes = docs(command, "indexes");
            all(
                !indexes.is_empty()
                    && indexes.iter().all(|i| {
                        i.get_document("key")
                            .ok()
                            .and_then(|k| k.keys().next())
                            .is_some_and(|k| k == TENANT_FIELD)
                    }),
                "an index that does not start with tenant_id",
            )
        }
        _ => Violation("a command the fence never sends"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn fenced_commands_pass_and_unfenced_ones_are_caught() {
        let t = "0190f7f6-0000-7000-8000-000000000001";
        assert_eq!(
            check("find", &doc! { "find": "m", "filter": { "tenant_id": t } }),
            Verdict::Fenced
        );
        assert!(matches!(
            check("find", &doc! { "find": "m", "filter": { "x": 1 } }),
            Verdict::Violation(_)
        ));
        assert!(matches!(
            check("find", &doc! { "find": "m" }),
            Verdict::Violation(_)
        ));
        assert!(matches!(
            check("find", &doc! { "find": "m", "filter": { "tenant_id": "" } }),
            Verdict::Violation(_)
        ));
        assert_eq!(
            check(
                "find",
                &doc! { "find": "m", "filter": {}, "comment": "mosaic:all-tenants:charges" }
            ),
            Verdict::AllTenants("charges".into())
        );
        assert!(matches!(
            check(
                "update",
                &doc! { "update": "m", "updates": [{ "q": { "tenant_id": t } }, { "q": {} }] }
            ),
            Verdict::Violation(_)
        ));
        assert_eq!(
            check(
                "insert",
                &doc! { "insert": "m", "documents": [{ "tenant_id": t, "_id": 1 }] }
            ),
            Verdict::Fenced
        );
        assert!(matches!(
            check(
                "insert",
                &doc! { "insert": "m", "documents": [{ "_id": 1 }] }
            ),
            Verdict::Violation(_)
        ));
        assert_eq!(
            check(
                "aggregate",
                &doc! { "aggregate": "m", "pipeline": [{ "$match": { "tenant_id": t } }, { "$group": {} }] }
            ),
            Verdict::Fenced
        );
        assert!(matches!(
            check(
                "aggregate",
                &doc! { "aggregate": "m", "pipeline": [{ "$group": {} }, { "$match": { "tenant_id": t } }] }
            ),
            Verdict::Violation(_)
        ));
        assert_eq!(
            check(
                "aggregate",
                &doc! { "aggregate": "m", "pipeline": [{ "$changeStream": {} }, { "$match": { "fullDocument.tenant_id": t } }] }
            ),
            Verdict::Fenced
        );
        assert!(matches!(
            check(
                "aggregate",
                &doc! { "aggregate": "m", "pipeline": [{ "$changeStream": {} }] }
            ),
            Verdict::Violation(_)
        ));
        assert!(matches!(
            check(
                "createIndexes",
                &doc! { "createIndexes": "m", "indexes": [{ "key": { "x": 1, "tenant_id": 1 } }] }
            ),
            Verdict::Violation(_)
        ));
        assert!(matches!(
            check("drop", &doc! { "drop": "m" }),
            Verdict::Violation(_)
        ));
        assert_eq!(
            check("getMore", &doc! { "getMore": 1_i64 }),
            Verdict::Fenced
        );
    }
}

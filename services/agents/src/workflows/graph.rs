//! A workflow's shape: its trigger config for the trigger type, and its nodes
//! and edges, which must form a DAG. Each violation names the field at fault
//! (`workflow.nodes[3].node_id`, `workflow.edges[7]`).

use std::collections::HashMap;

use mosaic_api::{ApiError, ApiResult, Violations, parse};
use mosaic_proto::agents::{TriggerType, WorkflowEdge, WorkflowNode};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

pub(crate) const MAX_NODES: usize = 500;
pub(crate) const MAX_EDGES: usize = 2000;
/// All nodes' and edges' JSON together.
pub(crate) const MAX_GRAPH_BYTES: usize = 1024 * 1024;
const MAX_NODE_CONFIG_BYTES: usize = 16 * 1024;
const MAX_ID: usize = 64;
const CHANNELS: &[&str] = &["chat", "voice", "email"];
const DEAL_STAGES: &[&str] = &[
    "lead",
    "qualified",
    "proposal",
    "negotiation",
    "closed_won",
    "closed_lost",
];

/// A node as stored (`nodes` is a JSON array of these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Node {
    pub(crate) id: String,
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) config: Json,
}

/// An edge as stored (`edges` is a JSON array of these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Edge {
    pub(crate) from: String,
    pub(crate) to: String,
}

/// `a-z0-9_-`, 1..64, starting with a letter or digit.
fn node_name(field: &str, raw: &str) -> ApiResult<String> {
    let ok = (1..=MAX_ID).contains(&raw.len())
        && raw.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(raw.to_owned())
    } else if raw.is_empty() {
        Err(ApiError::invalid_argument(field, "required"))
    } else {
        Err(ApiError::invalid_argument(
            field,
            format!("1..{MAX_ID} of a-z, 0-9, _ and -, starting with a letter or digit"),
        ))
    }
}

/// The nodes of a request, each checked on its own (ids distinct is the graph's check).
pub(crate) fn nodes(raw: &[WorkflowNode]) -> ApiResult<Vec<Node>> {
    if raw.len() > MAX_NODES {
        return Err(ApiError::invalid_argument(
            "workflow.nodes",
            format!("at most {MAX_NODES} nodes"),
        ));
    }
    let mut violations = Violations::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, node) in raw.iter().enumerate() {
        let at = format!("workflow.nodes[{i}]");
        let id = violations.take(node_name(&format!("{at}.node_id"), &node.node_id));
        let kind = violations.take(node_name(&format!("{at}.type"), &node.r#type));
        let config = violations.take(parse::json_object(
            &format!("{at}.config"),
            node.config.as_ref(),
            MAX_NODE_CONFIG_BYTES,
        ));
        if let (Some(id), Some(kind), Some(config)) = (id, kind, config) {
            out.push(Node { id, kind, config });
        }
    }
    violations.finish()?;
    Ok(out)
}

/// The edges of a request, each checked on its own.
pub(crate) fn edges(raw: &[WorkflowEdge]) -> ApiResult<Vec<Edge>> {
    if raw.len() > MAX_EDGES {
        return Err(ApiError::invalid_argument(
            "workflow.edges",
            format!("at most {MAX_EDGES} edges"),
        ));
    }
    let mut violations = Violations::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, edge) in raw.iter().enumerate() {
        let at = format!("workflow.edges[{i}]");
        let from = violations.take(node_name(&format!("{at}.from_node_id"), &edge.from_node_id));
        let to = violations.take(node_name(&format!("{at}.to_node_id"), &edge.to_node_id));
        if let (Some(from), Some(to)) = (from, to) {
            out.push(Edge { from, to });
        }
    }
    violations.finish()?;
    Ok(out)
}

/// The whole graph: distinct node ids, edges between existing nodes (no
/// self-loops, no repeats), no cycle (the edge that closes one is named),
/// bounded size.
pub(crate) fn check_graph(nodes: &[Node], edges: &[Edge]) -> ApiResult<()> {
    let mut violations = Violations::new();
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        if let Some(first) = index.insert(node.id.as_str(), i) {
            violations.add(
                format!("workflow.nodes[{i}].node_id"),
                format!("repeats workflow.nodes[{first}].node_id"),
            );
        }
    }
    let mut seen: HashMap<(&str, &str), usize> = HashMap::with_capacity(edges.len());
    let mut out: Vec<Vec<(usize, usize)>> = vec![Vec::new(); nodes.len()];
    for (i, edge) in edges.iter().enumerate() {
        let at = format!("workflow.edges[{i}]");
        let from = index.get(edge.from.as_str()).copied();
        let to = index.get(edge.to.as_str()).copied();
        if from.is_none() {
            violations.add(
                format!("{at}.from_node_id"),
                "names no node of the workflow",
            );
        }
        if to.is_none() {
            violations.add(format!("{at}.to_node_id"), "names no node of the workflow");
        }
        if edge.from == edge.to {
            violations.add(
                format!("{at}.to_node_id"),
                "an edge cannot join a node to itself",
            );
        }
        if let Some(first) = seen.insert((edge.from.as_str(), edge.to.as_str()), i) {
            violations.add(at.clone(), format!("repeats workflow.edges[{first}]"));
        }
        if let (Some(from), Some(to)) = (from, to) {
            out[from].push((to, i));
        }
    }
    violations.finish()?;
    if let Some(edge) = cycle_edge(&out) {
        let Edge { from, to } = &edges[edge];
        return Err(ApiError::invalid_argument(
            format!("workflow.edges[{edge}]"),
            format!("the edge {from} -> {to} closes a cycle; a workflow's graph must be acyclic"),
        ));
    }
    let size = serde_json::to_vec(nodes).map_or(usize::MAX, |b| b.len())
        + serde_json::to_vec(edges).map_or(usize::MAX, |b| b.len());
    if size > MAX_GRAPH_BYTES {
        return Err(ApiError::invalid_argument(
            "workflow.nodes",
            format!("nodes and edges together at most {MAX_GRAPH_BYTES} bytes of JSON"),
        ));
    }
    Ok(())
}

/// An edge on a cycle (a back edge of a depth-first search), if any.
/// `out[n]` lists `(successor, edge index)`. Iterative: no recursion depth.
fn cycle_edge(out: &[Vec<(usize, usize)>]) -> Option<usize> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; out.len()];
    for start in 0..out.len() {
        if mark[start] != Mark::New {
            continue;
        }
        // (node, next successor to look at)
        let mut stack = vec![(start, 0usize)];
        mark[start] = Mark::Open;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&(succ, edge)) = out[node].get(*next) {
                *next += 1;
                match mark[succ] {
                    Mark::Open => return Some(edge),
                    Mark::New => {
                        mark[succ] = Mark::Open;
                        stack.push((succ, 0));
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    None
}

/// The trigger config of `trigger`: only the keys the trigger type defines,
/// each of its shape (see `TriggerType` in `workflow.proto`).
pub(crate) fn check_trigger_config(trigger: TriggerType, config: &Json) -> ApiResult<()> {
    let field = |key: &str| format!("workflow.trigger_config.{key}");
    let Some(object) = config.as_object() else {
        return Err(ApiError::invalid_argument(
            "workflow.trigger_config",
            "must be a JSON object",
        ));
    };
    let one_of = |key: &str, allowed: &[&str]| -> ApiResult<()> {
        match object.get(key) {
            None => Ok(()),
            Some(Json::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
            Some(_) => Err(ApiError::invalid_argument(
                field(key),
                format!("one of {}", allowed.join(", ")),
            )),
        }
    };
    let known: &[&str] = match trigger {
        TriggerType::MessageReceived | TriggerType::ConversationStarted => {
            one_of("channel", CHANNELS)?;
            &["channel"]
        }
        TriggerType::DealStageChanged => {
            one_of("stage", DEAL_STAGES)?;
            &["stage"]
        }
        TriggerType::Schedule => {
            match object.get("cron") {
                Some(Json::String(cron)) if is_cron(cron) => {}
                None => return Err(ApiError::invalid_argument(field("cron"), "required")),
                Some(_) => {
                    return Err(ApiError::invalid_argument(
                        field("cron"),
                        "five space-separated fields of digits and * / , -, such as \"0 9 * * 1-5\"",
                    ));
                }
            }
            match object.get("timezone") {
                None => {}
                Some(Json::String(tz)) if (1..=64).contains(&tz.len()) => {}
                Some(_) => {
                    return Err(ApiError::invalid_argument(
                        field("timezone"),
                        "1..64 characters",
                    ));
                }
            }
            &["cron", "timezone"]
        }
        TriggerType::Webhook => return Ok(()),
        TriggerType::Unspecified => {
            return Err(ApiError::invalid_argument(
                "workflow.trigger_type",
                "required",
            ));
        }
    };
    if let Some(unknown) = object.keys().find(|key| !known.contains(&key.as_str())) {
        return Err(ApiError::invalid_argument(
            field(unknown),
            format!(
                "not a setting of this trigger type (it has: {})",
                known.join(", ")
            ),
        ));
    }
    Ok(())
}

fn is_cron(raw: &str) -> bool {
    let fields: Vec<&str> = raw.split(' ').collect();
    fields.len() == 5
        && fields.iter().all(|f| {
            !f.is_empty()
                && f.bytes()
                    .all(|b| b.is_ascii_digit() || b"*/,-".contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            kind: "step".into(),
            config: serde_json::json!({}),
        }
    }

    fn edge(from: &str, to: &str) -> Edge {
        Edge {
            from: from.into(),
            to: to.into(),
        }
    }

    fn fields(result: ApiResult<()>) -> Vec<String> {
        result
            .unwrap_err()
            .violations()
            .iter()
            .map(|v| v.field.clone())
            .collect()
    }

    #[test]
    fn a_dag_passes_and_every_fault_is_named() {
        let ns = [node("a"), node("b"), node("c"), node("d")];
        let diamond = [
            edge("a", "b"),
            edge("a", "c"),
            edge("b", "d"),
            edge("c", "d"),
        ];
        assert!(check_graph(&ns, &diamond).is_ok());
        assert!(check_graph(&[], &[]).is_ok());

        let cyclic = [edge("a", "b"), edge("b", "c"), edge("c", "a")];
        assert_eq!(fields(check_graph(&ns, &cyclic)), ["workflow.edges[2]"]);
        let missing = [edge("a", "zz")];
        assert_eq!(
            fields(check_graph(&ns, &missing)),
            ["workflow.edges[0].to_node_id"]
        );
        let twice = [node("a"), node("a")];
        assert_eq!(
            fields(check_graph(&twice, &[])),
            ["workflow.nodes[1].node_id"]
        );
        assert_eq!(
            fields(check_graph(&ns, &[edge("a", "a")])),
            ["workflow.edges[0].to_node_id"]
        );
        assert_eq!(
            fields(check_graph(&ns, &[edge("a", "b"), edge("a", "b")])),
            ["workflow.edges[1]"]
        );
    }

    #[test]
    fn a_long_chain_is_checked_without_recursion() {
        let ns: Vec<Node> = (0..MAX_NODES).map(|i| node(&format!("n{i}"))).collect();
        let mut es: Vec<Edge> = (1..MAX_NODES)
            .map(|i| edge(&format!("n{}", i - 1), &format!("n{i}")))
            .collect();
        assert!(check_graph(&ns, &es).is_ok());
        es.push(edge(&format!("n{}", MAX_NODES - 1), "n0"));
        assert_eq!(
            fields(check_graph(&ns, &es)),
            [format!("workflow.edges[{}]", MAX_NODES - 1)]
        );
    }

    #[test]
    fn trigger_configs_have_their_shapes() {
        let ok = |t, j| check_trigger_config(t, &j).is_ok();
        assert!(ok(
            TriggerType::Schedule,
            serde_json::json!({"cron": "0 9 * * 1-5"})
        ));
        assert!(!ok(TriggerType::Schedule, serde_json::json!({})));
        assert!(!ok(
            TriggerType::Schedule,
            serde_json::json!({"cron": "every day"})
        ));
        assert!(ok(
            TriggerType::DealStageChanged,
            serde_json::json!({"stage": "closed_won"})
        ));
        assert!(!ok(
            TriggerType::DealStageChanged,
            serde_json::json!({"stage": "won"})
        ));
        assert!(!ok(
            TriggerType::MessageReceived,
            serde_json::json!({"chanel": "chat"})
        ));
        assert!(ok(
            TriggerType::Webhook,
            serde_json::json!({"anything": [1, 2]})
        ));
        assert!(!ok(TriggerType::Unspecified, serde_json::json!({})));
    }
}

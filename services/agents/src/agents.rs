//! `AgentService`: agent configs (standard methods), their public keys, and
//! `LookupAgentByPublicKey`, the one documented cross-tenant read of the
//! suite (see `lookup_public_key` in `migrations/agents/0001_init.sql`).
//!
//! A public key is `mpk_` and 43 characters of base64url: 256 random bits
//! made here, never by the client. It is shown once, by `RotatePublicKey`;
//! only its SHA-256 is stored, so a leaked table reveals no key.
//!
//! GetAgent and LookupAgentByPublicKey are served from the Redis cache
//! (`mosaic_cache::Cache`) when cached: an agent under its tenant's key
//! (`config`), a lookup under the platform key of the key's hash
//! (`public-key`), whose cached answer names its tenant and is served only
//! while the access view says that tenant is active. Every mutation
//! invalidates both after its transaction commits and before it answers;
//! the cache's fill leases keep a slow reader from writing an old row back.

use std::marker::PhantomData;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mosaic_api::page::{self, PageBinding};
use mosaic_api::rules::{Kind, masked};
use mosaic_api::{AllOk, ApiError, ApiResult, convert, etag, mask::UpdateMask, parse};
use mosaic_cache::{Cache, CacheKey, Entry, Lookup};
use mosaic_db::access::AccessView;
use mosaic_db::{Changed, Database, Resource, TenantContext, create_once};
use mosaic_proto::agents::{
    Agent, ClearPublicKeyRequest, CreateAgentRequest, DeleteAgentRequest, GetAgentRequest,
    ListAgentsRequest, ListAgentsResponse, LookupAgentByPublicKeyRequest,
    LookupAgentByPublicKeyResponse, RotatePublicKeyRequest, RotatePublicKeyResponse,
    UndeleteAgentRequest, UpdateAgentRequest, agent_service_server::AgentService,
};
use mosaic_tenant::Role;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::ids::AgentId;

pub(crate) mod storage;

pub(crate) const RESOURCE: Resource<AgentId> = Resource {
    kind: Kind {
        name: "agent",
        not_found: "AGENT_NOT_FOUND",
        deleted: "AGENT_DELETED",
    },
    table: "agents",
    id_column: "agent_id",
    select: storage::SELECT,
    constraints: &[],
    id: PhantomData,
};

/// The service role a token needs for `LookupAgentByPublicKey`.
pub const EDGE_ROLE: &str = "svc:agent_lookup";
/// Reason of every lookup that finds nothing to serve.
pub const PUBLIC_KEY_NOT_FOUND: &str = "PUBLIC_KEY_NOT_FOUND";
/// Largest system prompt, in bytes of UTF-8.
pub const MAX_PROMPT_BYTES: usize = 32 * 1024;
/// Largest `voice_settings` and `metadata`, in bytes of encoded JSON.
pub const MAX_JSON_BYTES: usize = 8 * 1024;
const MAX_NAME: usize = 200;
const MAX_MODEL: usize = 100;
/// Temperature in hundredths: 0.00 ..= 2.00.
const MAX_TEMPERATURE_CENTI: i16 = 200;
const DEFAULT_TEMPERATURE_CENTI: i16 = 100;
const KEY_PREFIX: &str = "mpk_";
/// Characters of base64url that 32 random bytes take.
const KEY_RANDOM_CHARS: usize = 43;

mosaic_api::patch! {
    /// The writable fields of an agent, checked. Their names are the paths
    /// an update mask may name.
    pub(crate) struct AgentFields / AgentPatch {
        display_name: String,
        system_prompt: String,
        model: String,
        temperature: i16,
        voice_settings: serde_json::Value,
        enabled: bool,
        metadata: serde_json::Value,
    }
}

impl AgentPatch {
    /// Parses the fields of `agent` that `wanted` names; violations are
    /// named `agent.{field}`.
    fn parse(agent: &Agent, wanted: impl Fn(&str) -> bool) -> ApiResult<Self> {
        let (display_name, system_prompt, model, temperature, voice_settings, metadata) = (
            masked(wanted("display_name"), || {
                parse::name("agent.display_name", &agent.display_name, MAX_NAME)
            }),
            masked(wanted("system_prompt"), || {
                prompt("agent.system_prompt", &agent.system_prompt)
            }),
            masked(wanted("model"), || model("agent.model", &agent.model)),
            masked(wanted("temperature"), || {
                temperature("agent.temperature", &agent.temperature)
            }),
            masked(wanted("voice_settings"), || {
                parse::json_object(
                    "agent.voice_settings",
                    agent.voice_settings.as_ref(),
                    MAX_JSON_BYTES,
                )
            }),
            masked(wanted("metadata"), || {
                parse::json_object("agent.metadata", agent.metadata.as_ref(), MAX_JSON_BYTES)
            }),
        )
            .all_ok()?;
        Ok(Self {
            display_name,
            system_prompt,
            model,
            temperature,
            voice_settings,
            enabled: wanted("enabled").then_some(agent.enabled),
            metadata,
        })
    }
}

/// At most [`MAX_PROMPT_BYTES`] of text; newlines and tabs allowed.
fn prompt(field: &str, raw: &str) -> ApiResult<String> {
    if raw.len() > MAX_PROMPT_BYTES {
        return Err(ApiError::invalid_argument(
            field,
            format!("at most {MAX_PROMPT_BYTES} bytes"),
        ));
    }
    parse::text(field, raw, MAX_PROMPT_BYTES)
}

/// A model name: 1..=100 of letters, digits and `.-_:/`.
fn model(field: &str, raw: &str) -> ApiResult<String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(ApiError::invalid_argument(field, "required"));
    }
    if raw.len() > MAX_MODEL
        || !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:/".contains(&b))
    {
        return Err(ApiError::invalid_argument(
            field,
            format!("1..{MAX_MODEL} of letters, digits and .-_:/"),
        ));
    }
    Ok(raw.to_owned())
}

/// A decimal of at most two decimals in 0..=2 (`"0.7"`, `"1.25"`, `"2"`),
/// as an exact number of hundredths; empty is 1.00. Parsed as digits, never
/// through a float.
pub(crate) fn temperature(field: &str, raw: &str) -> ApiResult<i16> {
    if raw.is_empty() {
        return Ok(DEFAULT_TEMPERATURE_CENTI);
    }
    let bad = || {
        ApiError::invalid_argument(
            field,
            "a decimal from 0 to 2 with at most two decimals, such as 0.7",
        )
    };
    let (whole, fraction) = raw.split_once('.').unwrap_or((raw, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || whole.len() > 1
        || !digits(whole)
        || fraction.len() > 2
        || !digits(fraction)
    {
        return Err(bad());
    }
    if raw.ends_with('.') {
        return Err(bad());
    }
    let whole = i16::from(whole.as_bytes()[0] - b'0');
    let fraction = format!("{fraction:0<2}");
    let hundredths: i16 = fraction.parse().map_err(|_| bad())?;
    let centi = whole * 100 + hundredths;
    if centi > MAX_TEMPERATURE_CENTI {
        return Err(bad());
    }
    Ok(centi)
}

/// Hundredths as the API writes them: exactly two decimals.
pub(crate) fn format_temperature(centi: i16) -> String {
    format!("{}.{:02}", centi / 100, centi % 100)
}

/// A new public key and what is stored of it.
struct PublicKey {
    text: String,
    hash: Vec<u8>,
    prefix: String,
}

impl PublicKey {
    fn generate() -> Self {
        let random = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let text = format!("{KEY_PREFIX}{random}");
        Self {
            hash: key_hash(&text),
            prefix: format!("{KEY_PREFIX}{}", &random[..8]),
            text,
        }
    }
}

fn key_hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Whether `raw` has the shape of a key this service makes (a cheap refusal
/// of anything else before it reaches the database).
fn is_key_shaped(raw: &str) -> bool {
    raw.strip_prefix(KEY_PREFIX).is_some_and(|random| {
        random.len() == KEY_RANDOM_CHARS
            && random
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Cache kinds: an agent by id (tenant key), a lookup by key hash (platform key).
const CONFIG: &str = "config";
const PUBLIC_KEY: &str = "public-key";

#[derive(Debug)]
pub struct Agents {
    db: Database,
    access: Arc<AccessView>,
    cache: Cache,
}

impl Agents {
    pub fn new(db: Database, access: Arc<AccessView>, cache: Cache) -> Self {
        Self { db, access, cache }
    }

    fn lookup_key(&self, hash: &[u8]) -> CacheKey {
        self.cache
            .platform_key(PUBLIC_KEY, URL_SAFE_NO_PAD.encode(hash))
    }

    /// After a committed change of `row`: drops its cached config and the
    /// cached lookup of its key, and of `old_key` (a key it no longer holds).
    async fn invalidate(
        &self,
        ctx: &TenantContext,
        row: &storage::AgentRow,
        old_key: Option<&[u8]>,
    ) {
        if let Ok(key) = self.cache.key(ctx, CONFIG, row.agent_id) {
            self.cache.invalidate(&key).await;
        }
        for hash in [row.public_key_hash.as_deref(), old_key]
            .into_iter()
            .flatten()
        {
            self.cache.invalidate(&self.lookup_key(hash)).await;
        }
    }
}

/// A cached message, or `None` when the entry does not decode (then it is
/// read from the store like a miss; the next write replaces it).
fn decoded<M: Message + Default>(entry: &Entry) -> Option<M> {
    M::decode(entry.bytes.as_slice()).ok()
}

#[tonic::async_trait]
impl AgentService for Agents {
    async fn create_agent(
        &self,
        req: Request<CreateAgentRequest>,
    ) -> Result<Response<Agent>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.into_inner();
        let agent = request.agent.clone().unwrap_or_default();
        let (new, request_id) = (
            AgentPatch::parse(&agent, |_| true).and_then(AgentPatch::into_new),
            parse::request_id("request_id", &request.request_id),
        )
            .all_ok()?;
        let agent = create_once(
            &self.db,
            &ctx,
            "CreateAgent",
            request_id,
            &request,
            async |tx| {
                let id = AgentId::new();
                let row = storage::insert(tx, id, &new).await?;
                tx.audit("agent.create", "agent", id, serde_json::json!({}))
                    .await?;
                Ok(row.into_proto())
            },
        )
        .await?;
        Ok(Response::new(agent))
    }

    async fn get_agent(&self, req: Request<GetAgentRequest>) -> Result<Response<Agent>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let id: AgentId = parse::id("agent_id", &req.get_ref().agent_id)?;
        let key = self.cache.key(&ctx, CONFIG, id)?;
        // The store is read only after the lookup returned (the fill lease's rule).
        let fill = match self.cache.get(&key).await {
            Lookup::Hit(entry) => match decoded::<Agent>(&entry) {
                Some(agent) => return Ok(Response::new(agent)),
                None => None,
            },
            Lookup::Miss(token) => Some(token),
            Lookup::Unavailable => None,
        };
        let row: storage::AgentRow = RESOURCE.read(&self.db, &ctx, id).await?;
        let agent = row.into_proto();
        if let Some(token) = fill {
            let entry = Entry::versioned(agent.etag.clone(), agent.encode_to_vec());
            self.cache.fill(token, entry).await;
        }
        Ok(Response::new(agent))
    }

    async fn list_agents(
        &self,
        req: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let request = req.get_ref();
        let (size, model_filter) = (
            parse::page_size("page_size", request.page_size),
            if request.model.is_empty() {
                Ok(None)
            } else {
                model("model", &request.model).map(Some)
            },
        )
            .all_ok()?;
        let binding = PageBinding::new("ListAgents")
            .with(ctx.tenant_id()?)
            .with(request.show_deleted)
            .with(format_args!("{:?}", request.enabled))
            .with(model_filter.as_deref().unwrap_or(""));
        let after = page::decode::<AgentId>(&binding, &request.page_token)?;
        let filter = storage::AgentFilter {
            show_deleted: request.show_deleted,
            enabled: request.enabled,
            model: model_filter,
        };
        let rows = self
            .db
            .read(&ctx, storage::list_page(&filter, after, size))
            .await?;
        let (agents, next_page_token) = page::page(
            rows,
            size,
            &binding,
            |agent| agent.agent_id,
            storage::AgentRow::into_proto,
        );
        Ok(Response::new(ListAgentsResponse {
            agents,
            next_page_token,
        }))
    }

    async fn update_agent(
        &self,
        req: Request<UpdateAgentRequest>,
    ) -> Result<Response<Agent>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.into_inner();
        let agent = request.agent.unwrap_or_default();
        let mask = UpdateMask::parse(request.update_mask.as_ref(), AgentPatch::PATHS)?;
        let (id, expected, patch) = (
            parse::id("agent.agent_id", &agent.agent_id),
            etag::parse("agent.etag", &agent.etag),
            AgentPatch::parse(&agent, |path| mask.contains(path)),
        )
            .all_ok()?;
        let row = RESOURCE
            .update(
                &self.db,
                &ctx,
                id,
                expected,
                mask.audit_details(),
                async |tx, current: storage::AgentRow| {
                    storage::update(tx, id, &patch.apply(current.fields())).await
                },
            )
            .await?;
        self.invalidate(&ctx, &row, None).await;
        Ok(Response::new(row.into_proto()))
    }

    async fn delete_agent(
        &self,
        req: Request<DeleteAgentRequest>,
    ) -> Result<Response<Agent>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let request = req.get_ref();
        let (id, expected) = (
            parse::id("agent_id", &request.agent_id),
            etag::parse("etag", &request.etag),
        )
            .all_ok()?;
        let row: storage::AgentRow = RESOURCE
            .delete_or_undelete(&self.db, &ctx, id, expected, true)
            .await?;
        self.invalidate(&ctx, &row, None).await;
        Ok(Response::new(row.into_proto()))
    }

    async fn undelete_agent(
        &self,
        req: Request<UndeleteAgentRequest>,
    ) -> Result<Response<Agent>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let id = parse::id("agent_id", &req.get_ref().agent_id)?;
        let row: storage::AgentRow = RESOURCE
            .delete_or_undelete(&self.db, &ctx, id, None, false)
            .await?;
        self.invalidate(&ctx, &row, None).await;
        Ok(Response::new(row.into_proto()))
    }

    async fn rotate_public_key(
        &self,
        req: Request<RotatePublicKeyRequest>,
    ) -> Result<Response<RotatePublicKeyResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let request = req.get_ref();
        let (id, expected) = (
            parse::id("agent_id", &request.agent_id),
            etag::parse("etag", &request.etag),
        )
            .all_ok()?;
        let key = PublicKey::generate();
        let details = serde_json::json!({ "public_key_prefix": key.prefix });
        let row = self
            .set_public_key(
                &ctx,
                id,
                expected,
                Some(&key),
                "agent.rotate_public_key",
                details,
            )
            .await?;
        Ok(Response::new(RotatePublicKeyResponse {
            agent: Some(row.into_proto()),
            public_key: key.text,
        }))
    }

    async fn clear_public_key(
        &self,
        req: Request<ClearPublicKeyRequest>,
    ) -> Result<Response<Agent>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let request = req.get_ref();
        let (id, expected) = (
            parse::id("agent_id", &request.agent_id),
            etag::parse("etag", &request.etag),
        )
            .all_ok()?;
        let row = self
            .set_public_key(
                &ctx,
                id,
                expected,
                None,
                "agent.clear_public_key",
                serde_json::json!({}),
            )
            .await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn lookup_agent_by_public_key(
        &self,
        req: Request<LookupAgentByPublicKeyRequest>,
    ) -> Result<Response<LookupAgentByPublicKeyResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require_service_role(EDGE_ROLE)?;
        let raw = req.get_ref().public_key.as_str();
        if raw.is_empty() {
            return Err(ApiError::invalid_argument("public_key", "required").into());
        }
        let not_found =
            || ApiError::not_found(PUBLIC_KEY_NOT_FOUND, "no agent has this public key");
        if !is_key_shaped(raw) {
            return Err(not_found().into());
        }
        let hash = key_hash(raw);
        let key = self.lookup_key(&hash);
        let cached = match self.cache.get(&key).await {
            Lookup::Hit(entry) => Ok(decoded::<LookupAgentByPublicKeyResponse>(&entry)),
            Lookup::Miss(token) => Err(Some(token)),
            Lookup::Unavailable => Err(None),
        };
        let found = match cached {
            Ok(Some(found)) => found,
            Ok(None) | Err(_) => {
                // Only a key that resolves is cached; an unknown key is read
                // from the store every time.
                let row = storage::lookup(&self.db, &hash)
                    .await?
                    .ok_or_else(not_found)?;
                let found = LookupAgentByPublicKeyResponse {
                    tenant_id: row.tenant_id.to_string(),
                    agent_id: row.agent_id.to_string(),
                    display_name: row.display_name,
                    voice_settings: Some(convert::json_to_struct(row.voice_settings)),
                };
                if let Err(Some(token)) = cached {
                    self.cache
                        .fill(token, Entry::new(found.encode_to_vec()))
                        .await;
                }
                found
            }
        };
        // The tenant's state is identity's: the access view follows it, also
        // for a cached answer.
        let tenant = found
            .tenant_id
            .parse::<uuid::Uuid>()
            .map_err(|_| ApiError::internal("a cached lookup names no tenant"))?;
        if !self.access.tenant_is_active(tenant.into()).await? {
            return Err(not_found().into());
        }
        Ok(Response::new(found))
    }
}

impl Agents {
    /// Sets (`Some`) or clears the public key of a live agent, with its
    /// audit event (`action`); clearing an agent without a key changes
    /// nothing. The cached entries of the agent and of its old key go after
    /// the commit.
    async fn set_public_key(
        &self,
        ctx: &TenantContext,
        id: AgentId,
        expected: Option<i64>,
        key: Option<&PublicKey>,
        action: &str,
        details: serde_json::Value,
    ) -> ApiResult<storage::AgentRow> {
        let mut old_key = None;
        let row = RESOURCE
            .change(
                &self.db,
                ctx,
                id,
                expected,
                action,
                details,
                async |tx, current: storage::AgentRow| {
                    if key.is_none() && current.public_key_hash.is_none() {
                        return Ok(Changed::Unchanged(current));
                    }
                    old_key = current.public_key_hash;
                    let key = key.map(|key| (key.hash.as_slice(), key.prefix.as_str()));
                    storage::set_public_key(tx, id, key)
                        .await
                        .map(Changed::Written)
                },
            )
            .await?;
        self.invalidate(ctx, &row, old_key.as_deref()).await;
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperatures_are_exact_hundredths() {
        for (raw, centi) in [
            ("", 100),
            ("0", 0),
            ("0.7", 70),
            ("0.70", 70),
            ("1.25", 125),
            ("2", 200),
            ("2.00", 200),
            ("0.07", 7),
        ] {
            assert_eq!(temperature("t", raw).unwrap(), centi, "{raw}");
        }
        for bad in [
            "2.01", "-0.01", "1.234", "abc", "1e0", " 1", "1.", ".5", "3", "10", "0.7 ", "+1",
        ] {
            assert!(temperature("t", bad).is_err(), "{bad}");
        }
        assert_eq!(format_temperature(70), "0.70");
        assert_eq!(format_temperature(200), "2.00");
        assert_eq!(format_temperature(5), "0.05");
    }

    #[test]
    fn keys_are_random_and_only_their_hash_is_kept() {
        let (a, b) = (PublicKey::generate(), PublicKey::generate());
        assert_ne!(a.text, b.text);
        assert!(is_key_shaped(&a.text), "{}", a.text);
        assert!(a.text.starts_with(&a.prefix) && a.prefix.len() < a.text.len());
        assert_eq!(a.hash, key_hash(&a.text));
        assert!(!is_key_shaped("mpk_short"));
        assert!(!is_key_shaped(&a.text.replace("mpk_", "mak_")));
    }
}

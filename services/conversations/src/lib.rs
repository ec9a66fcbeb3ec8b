//! The conversations service: conversations between an AI agent and a
//! contact, their threads and messages, a live tail, and exactly-once
//! charging of AI usage through billing. Stored in MongoDB, which has no
//! row-level security: every command goes through `mosaic_mongo`'s tenant
//! fence, and this crate does not depend on the `mongodb` crate at all, so
//! it cannot reach a collection any other way.
//!
//! Layout:
//! - [`store`]: the repository, the only code that holds the (fenced)
//!   collections; records in, records out; the indexes and the query each serves;
//! - [`conversations`]: `ConversationService` (start, get, list, end,
//!   archive, add thread, stats); start asks agents and crm as the caller;
//! - [`messages`]: `MessageService` (append, get, list, tail);
//! - [`tail`]: the replay-then-follow stream;
//! - [`charges`]: the charging saga and its sweeper;
//! - [`input`], [`ids`]: request values and id newtypes.
//!
//! [`Conversations`] describes the service to the kit: no PostgreSQL schema;
//! its health follows MongoDB (a MongoDB outage takes conversations out while
//! the other services of the process stay SERVING).

use std::sync::Arc;

use mosaic_core::StartupError;
use mosaic_mongo::{Mongo, MongoConfig};
use mosaic_proto::conversations::{
    conversation_service_server::ConversationServiceServer,
    message_service_server::MessageServiceServer,
};
use mosaic_server::{Deps, Service, ServiceModule, add_services};

pub mod charges;
pub mod conversations;
pub mod ids;
pub mod input;
pub mod messages;
pub mod store;
pub mod tail;

/// The conversations service, for the kit.
#[derive(Debug, Clone, Copy)]
pub struct Conversations;

impl ServiceModule for Conversations {
    fn name(&self) -> &'static str {
        "conversations"
    }

    fn build(&self, deps: &Deps) -> Result<Service, StartupError> {
        let mongo = Mongo::connect_lazy(
            MongoConfig::from_env(&deps.env, self.name())?,
            "mosaic-conversations",
        );
        let store = store::Store::new(&mongo);
        let prices = charges::Prices::from_env(&deps.env)?;
        let charger = Arc::new(charges::Charger::new(
            deps.peers.channel("billing")?,
            deps.tokens.signer()?,
            deps.tokens.verify.clone(),
            store.clone(),
            &deps.env,
        )?);
        let sweep_every = deps.env.millis(charges::CHARGE_SWEEP_MS, 1000)?;
        let mut service = Service::new(deps);
        add_services!(
            service,
            ConversationServiceServer::new(conversations::ConversationApi::new(
                store.clone(),
                deps.peers.channel("agents")?,
                deps.peers.channel("crm")?,
            )),
            MessageServiceServer::new(messages::MessageApi::new(
                store,
                charger.clone(),
                prices,
                deps.stop.clone(),
                deps.env.millis(tail::STALL_MS, tail::DEFAULT_STALL_MS)?,
            )),
        );
        service.probe(Arc::new(mongo));
        let pending = Arc::new(charges::PendingStats::default());
        pending.register_metrics(&deps.metrics)?;
        service.background("conversations-charge-sweeper", move |stop| {
            charges::sweeper(charger, pending, sweep_every, stop)
        });
        Ok(service)
    }
}

//! The tenant-propagation layer: who is calling, for which tenant, as part of
//! which request, and until when.
//!
//! - [`context`]: [`TenantContext`], the value every handler starts from and
//!   every data access requires; [`Role`]s and their order.
//! - [`token`]: JWT claims, [`TokenVerifier`] (issuer, audience, expiry,
//!   signature; EdDSA, RS256 or HS256; verified tokens cached briefly) and
//!   [`TokenSigner`].
//! - [`layer`]: [`AuthLayer`], the server-side tower layer that verifies the
//!   bearer token, takes or makes `x-request-id` and `traceparent`, reads the
//!   deadline, and puts a [`TenantContext`] on the request.
//! - [`propagation`]: [`Propagate`], the client-side interceptor that forwards
//!   token, request id, trace context and the remaining deadline to another service.
//! - [`client`]: [`peer_error`], what a caller sees when a peer service fails.
//! - [`peer_channel`]: [`PeerChannel`], the channel to a peer service, with a
//!   client span per call while spans are exported.

pub mod client;
pub mod context;
pub mod layer;
pub mod peer_channel;
pub mod propagation;
pub mod token;
mod trace;

pub use client::peer_error;
pub use context::{Role, TenantContext};
pub use layer::{AccessPolicy, AuthLayer, CallMeta};
pub use peer_channel::PeerChannel;
pub use propagation::Propagate;
pub use token::{
    AuthConfig, Claims, KeyError, KeyMaterial, ServiceToken, TokenSettings, TokenSigner,
    TokenVerifier,
};

//! [`Peers`]: where the other Mosaic services of a call are. A service that
//! calls another one (conversations asking agents whether an agent exists)
//! takes a channel from here and wraps it in a generated client with the
//! caller's [`Propagate`](mosaic_tenant::Propagate) interceptor.
//!
//! `MOSAIC_<NAME>_GRPC_URL` (e.g. `MOSAIC_AGENTS_GRPC_URL`) names a peer.
//! Unset, a peer served by this same process (the all-in-one `mosaic`
//! binary, the tests) is this process's own address, and any other is its
//! Kubernetes Service, `http://mosaic-<name>:50051`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use mosaic_core::{ConfigError, Env, StartupError};
use mosaic_tenant::PeerChannel;
use tonic::transport::Endpoint;

/// How long connecting to a peer may take before its calls fail UNAVAILABLE.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The services of this process and its own address.
#[derive(Debug, Clone)]
pub struct Peers {
    env: Env,
    local: BTreeSet<&'static str>,
    own: Option<SocketAddr>,
}

impl Peers {
    pub(crate) fn new(env: Env, local: BTreeSet<&'static str>, own: Option<SocketAddr>) -> Self {
        Self { env, local, own }
    }

    /// The variable naming peer `name`'s address.
    pub fn url_var(name: &str) -> String {
        format!("MOSAIC_{}_GRPC_URL", name.to_uppercase())
    }

    /// The URL of peer `name` (see the module docs).
    pub fn url(&self, name: &str) -> Result<String, ConfigError> {
        let var = Self::url_var(name);
        if let Some(url) = self.env.get(&var)? {
            return Ok(url);
        }
        Ok(match self.own {
            Some(own) if self.local.contains(name) => {
                let host = if own.ip().is_unspecified() {
                    "127.0.0.1".to_owned()
                } else if own.is_ipv6() {
                    format!("[{}]", own.ip())
                } else {
                    own.ip().to_string()
                };
                format!("http://{host}:{}", own.port())
            }
            _ => format!("http://mosaic-{name}:50051"),
        })
    }

    /// A lazily connected channel to peer `name` (with a client span per
    /// call while spans are exported).
    pub fn channel(&self, name: &str) -> Result<PeerChannel, StartupError> {
        let url = self.url(name)?;
        let endpoint = Endpoint::from_shared(url.clone()).map_err(|e| {
            ConfigError::invalid(&Self::url_var(name), &url, format_args!("not a URL: {e}"))
        })?;
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(PeerChannel::new(channel, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_peers_are_this_process_and_others_their_service() {
        let local = BTreeSet::from(["agents"]);
        let peers = Peers::new(
            Env::from_pairs::<&str, &str>([]),
            local.clone(),
            Some("0.0.0.0:50051".parse().unwrap()),
        );
        assert_eq!(peers.url("agents").unwrap(), "http://127.0.0.1:50051");
        assert_eq!(peers.url("crm").unwrap(), "http://mosaic-crm:50051");
        let set = Peers::new(
            Env::from_pairs([("MOSAIC_AGENTS_GRPC_URL", "http://agents.internal:9000")]),
            local,
            Some("127.0.0.1:7000".parse().unwrap()),
        );
        assert_eq!(set.url("agents").unwrap(), "http://agents.internal:9000");
        let bad = Peers::new(
            Env::from_pairs([("MOSAIC_CRM_GRPC_URL", "not a url")]),
            BTreeSet::new(),
            None,
        );
        assert!(bad.channel("crm").is_err());
    }
}

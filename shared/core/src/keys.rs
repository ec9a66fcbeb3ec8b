//! Names that carry a tenant. Every Redis key of a tenant is built here, so
//! no key can be written without its tenant, and every key of one tenant
//! falls in one Redis Cluster hash slot: the tenant sits in braces, the hash
//! tag (`mosaic:{<tenant>}:agents:config:<id>`).

use std::fmt::{Display, Write};

use crate::ids::TenantId;

/// `mosaic:{<tenant>}:<part>:<part>...`. Parts are our own names and ids,
/// never raw client text: a `:` or `{` in a part would blur the key's shape.
pub fn redis_key(tenant: TenantId, parts: &[&dyn Display]) -> String {
    let mut key = format!("mosaic:{{{tenant}}}");
    for part in parts {
        let _ = write!(key, ":{part}");
    }
    key
}

/// The hash tag of a Redis key built by [`redis_key`]: the tenant, or `None`
/// for a key of another shape.
pub fn tenant_of_key(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("mosaic:{")?;
    let (tenant, _) = rest.split_once('}')?;
    Some(tenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_is_the_hash_tag() {
        let tenant = TenantId::new();
        let key = redis_key(tenant, &[&"agents", &"config", &42]);
        assert_eq!(key, format!("mosaic:{{{tenant}}}:agents:config:42"));
        assert_eq!(tenant_of_key(&key), Some(tenant.to_string().as_str()));
        assert_eq!(
            redis_key(tenant, &[&"ratelimit"]),
            format!("mosaic:{{{tenant}}}:ratelimit")
        );
        assert_eq!(tenant_of_key("other:key"), None);
    }
}

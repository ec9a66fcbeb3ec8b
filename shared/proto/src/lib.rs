//! Rust bindings of the Mosaic contracts in `proto/`: messages, server traits and
//! clients, generated at build time (never committed). This crate is also the
//! client SDK for internal services: pair a generated client with
//! `mosaic_tenant::propagation` to forward the caller's tenant context.
//!
//! Layout mirrors the proto packages: `pb::mosaic::identity::v1`, `pb::mosaic::crm::v1`, ...
//! [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod codec;

/// Generated code, one module per proto package.
pub mod pb {
    /// `google.rpc` error details, vendored in `proto/google/rpc` so that
    /// reflection describes them (grpcurl then prints `ErrorInfo` and
    /// `BadRequest`); servers build details with `tonic-types`.
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
    pub mod mosaic {
        pub mod common {
            pub mod v1 {
                tonic::include_proto!("mosaic.common.v1");
            }
        }
        pub mod identity {
            pub mod v1 {
                tonic::include_proto!("mosaic.identity.v1");
            }
        }
        pub mod crm {
            pub mod v1 {
                tonic::include_proto!("mosaic.crm.v1");
            }
        }
        pub mod agents {
            pub mod v1 {
                tonic::include_proto!("mosaic.agents.v1");
            }
        }
        pub mod billing {
            pub mod v1 {
                tonic::include_proto!("mosaic.billing.v1");
            }
        }
        pub mod conversations {
            pub mod v1 {
                tonic::include_proto!("mosaic.conversations.v1");
            }
        }
    }
}

pub use pb::mosaic::agents::v1 as agents;
pub use pb::mosaic::billing::v1 as billing;
pub use pb::mosaic::common::v1 as common;
pub use pb::mosaic::conversations::v1 as conversations;
pub use pb::mosaic::crm::v1 as crm;
pub use pb::mosaic::identity::v1 as identity;

/// Encoded `FileDescriptorSet` of every Mosaic proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mosaic_descriptor");

/// The text a proto enum value is stored as in a database: its name without
/// the enum's prefix, lowercased (`DEAL_STAGE_CLOSED_WON` → `closed_won`).
/// Derived from the generated names, so a new value needs no hand-kept table.
pub trait StoredEnum: Copy + PartialEq + Sized + 'static {
    /// Every value but the zero `*_UNSPECIFIED` one, with its stored name, in
    /// declaration order.
    fn stored_names() -> &'static [(Self, String)];

    /// The stored name; empty for the zero value.
    fn stored_name(self) -> &'static str {
        Self::stored_names()
            .iter()
            .find(|(value, _)| *value == self)
            .map_or("", |(_, name)| name.as_str())
    }

    /// The value stored as `name`.
    fn from_stored(name: &str) -> Option<Self> {
        Self::stored_names()
            .iter()
            .find(|(_, stored)| stored == name)
            .map(|(value, _)| *value)
    }
}

/// `(value, stored name)` of every value of `E` from 1 up, from the
/// generated names: the zero value's name minus `UNSPECIFIED` is the prefix.
fn stored_names_of<E>(as_str_name: fn(&E) -> &'static str) -> Vec<(E, String)>
where
    E: TryFrom<i32> + Copy,
{
    let prefix = E::try_from(0)
        .ok()
        .map(|zero| as_str_name(&zero).trim_end_matches("UNSPECIFIED"))
        .unwrap_or_default();
    (1..=i32::from(u8::MAX))
        .filter_map(|n| E::try_from(n).ok())
        .map(|value| {
            let name = as_str_name(&value);
            (
                value,
                name.strip_prefix(prefix)
                    .unwrap_or(name)
                    .to_ascii_lowercase(),
            )
        })
        .collect()
}

macro_rules! stored_enums {
    ($($ty:ty),+ $(,)?) => {$(
        impl StoredEnum for $ty {
            fn stored_names() -> &'static [(Self, String)] {
                static NAMES: std::sync::OnceLock<Vec<($ty, String)>> = std::sync::OnceLock::new();
                NAMES.get_or_init(|| stored_names_of::<$ty>(<$ty>::as_str_name))
            }
        }
    )+};
}

stored_enums!(
    identity::Plan,
    identity::Role,
    identity::Provider,
    identity::ConnectionStatus,
    crm::DealStage,
    crm::ActivityKind,
    agents::DocumentStatus,
    agents::TriggerType,
    agents::ExecutionStatus,
    agents::ActionKind,
    agents::ActionState,
    agents::SubjectType,
    billing::EntryKind,
    billing::HoldStatus,
    conversations::Channel,
    conversations::ConversationStatus,
    conversations::SenderType,
    conversations::MessageType,
    conversations::ChargeState,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_come_from_the_generated_names() {
        assert_eq!(crm::DealStage::ClosedWon.stored_name(), "closed_won");
        assert_eq!(
            crm::DealStage::from_stored("negotiation"),
            Some(crm::DealStage::Negotiation)
        );
        assert_eq!(crm::DealStage::Unspecified.stored_name(), "");
        assert_eq!(crm::DealStage::from_stored("unspecified"), None);
        assert_eq!(identity::Plan::Enterprise.stored_name(), "enterprise");
        assert_eq!(identity::Role::Viewer.stored_name(), "viewer");
        let stages: Vec<&str> = crm::DealStage::stored_names()
            .iter()
            .map(|(_, n)| n.as_str())
            .collect();
        assert_eq!(
            stages,
            [
                "lead",
                "qualified",
                "proposal",
                "negotiation",
                "closed_won",
                "closed_lost"
            ]
        );
        assert_eq!(crm::ActivityKind::Meeting.stored_name(), "meeting");
    }
}

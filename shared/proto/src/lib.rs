//! Rust bindings of the Mosaic contracts in `proto/`: messages, server traits and
//! clients, generated at build time (never committed). This crate is also the
//! client SDK for internal services: pair a generated client with
//! `mosaic_tenant::propagation` to forward the caller's tenant context.
//!
//! Layout mirrors the proto packages: `pb::mosaic::identity::v1`, `pb::mosaic::crm::v1`, ...
//! [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// Generated code, one module per proto package.
pub mod pb {
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
    }
}

pub use pb::mosaic::common::v1 as common;
pub use pb::mosaic::crm::v1 as crm;
pub use pb::mosaic::identity::v1 as identity;

/// Encoded `FileDescriptorSet` of every Mosaic proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mosaic_descriptor");

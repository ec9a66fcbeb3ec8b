//! What this server can answer, from the protobuf descriptor sets: gRPC server
//! reflection (both `v1` and `v1alpha`: grpcurl 1.8 speaks only v1alpha) and
//! the full method paths the metrics layer labels by name.
//!
//! Reflection lists only the services a server says it serves (plus health
//! and reflection), though it describes every Mosaic message: one process
//! serving identity should not advertise CRM.

use std::collections::HashSet;

use prost::Message;
use prost_types::FileDescriptorSet;
use tonic_reflection::server::{Builder, Error};

/// Every descriptor set served: Mosaic's contracts, gRPC health, and
/// reflection itself (both versions, so each lists the other).
pub const DESCRIPTOR_SETS: [&[u8]; 4] = [
    mosaic_proto::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// Listed by every server.
pub const ALWAYS_LISTED: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

fn builder<'a>(services: impl IntoIterator<Item = &'a str>) -> Builder<'static> {
    // The reflection descriptors are registered explicitly (in
    // DESCRIPTOR_SETS), so that v1 also describes v1alpha and back.
    let builder = DESCRIPTOR_SETS.iter().fold(
        Builder::configure().include_reflection_service(false),
        |b, set| b.register_encoded_file_descriptor_set(set),
    );
    ALWAYS_LISTED
        .into_iter()
        .chain(services)
        .fold(builder, |b, name| b.with_service_name(name))
}

/// The `grpc.reflection.v1.ServerReflection` service, listing `services`
/// (fully qualified names).
pub fn v1<'a>(
    services: impl IntoIterator<Item = &'a str>,
) -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    Error,
> {
    builder(services).build_v1()
}

/// The `grpc.reflection.v1alpha.ServerReflection` service, listing `services`.
pub fn v1alpha<'a>(
    services: impl IntoIterator<Item = &'a str>,
) -> Result<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
    Error,
> {
    builder(services).build_v1alpha()
}

/// `/package.Service/Method` for every method in [`DESCRIPTOR_SETS`].
pub fn method_paths() -> Result<HashSet<String>, prost::DecodeError> {
    let mut paths = HashSet::new();
    for encoded in DESCRIPTOR_SETS {
        let set = FileDescriptorSet::decode(encoded)?;
        for file in set.file {
            let package = file.package();
            for service in &file.service {
                let qualified = if package.is_empty() {
                    service.name().to_owned()
                } else {
                    format!("{package}.{}", service.name())
                };
                for method in &service.method {
                    paths.insert(format!("/{qualified}/{}", method.name()));
                }
            }
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_method_is_known() {
        let paths = method_paths().expect("descriptor sets decode");
        for p in [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "/mosaic.identity.v1.TokenService/ExchangeApiKey",
        ] {
            assert!(paths.contains(p), "{p}");
        }
    }

    #[test]
    fn both_reflection_versions_build() {
        assert!(v1(["mosaic.crm.v1.CrmService"]).is_ok());
        assert!(v1alpha([]).is_ok());
    }
}

//! `mosaic-conversations`: the conversations service alone (one Kubernetes Deployment).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    mosaic_server::service_main(&mosaic_conversations::Conversations)
}

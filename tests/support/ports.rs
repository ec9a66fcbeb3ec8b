//! Ports for child processes (the suite's and the fault card's).

#![allow(dead_code, unreachable_pub)]

/// A free port for a child process to listen on, from below the kernel's
/// ephemeral range (32768..60999 here): a port taken from `bind(0)` and
/// released could be handed to an in-process suite binding port 0 before the
/// child binds it, and a health check would then reach that suite instead.
pub fn child_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() % 4000) as u16;
    loop {
        let offset = NEXT.fetch_add(7, Ordering::Relaxed);
        let port = 24000 + (seed + offset) % 8000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

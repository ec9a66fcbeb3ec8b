//! Shutdown: the process signal, and a [`Shutdown`] handle that long-lived
//! handlers (server streams) select on so they end when draining starts.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// Completes on SIGTERM (Kubernetes sends this to stop a pod) or SIGINT
/// (Ctrl-C in a terminal).
pub async fn sigterm_or_ctrl_c() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "shutdown signal received"),
        () = terminate => tracing::info!(signal = "SIGTERM", "shutdown signal received"),
    }
}

/// Tells handlers that the server is draining. Clones share one state.
///
/// ```
/// # async fn stream(stop: mosaic_server::Shutdown, mut updates: tokio::sync::mpsc::Receiver<u32>) {
/// loop {
///     tokio::select! {
///         () = stop.cancelled() => break, // end the stream; the client reconnects elsewhere
///         Some(u) = updates.recv() => { /* send u */ }
///         else => break,
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the shutdown; idempotent.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once [`Shutdown::trigger`] was called. Owns what it needs,
    /// so it can be moved into a spawned task or a stream.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn trigger_reaches_every_clone() {
        let stop = Shutdown::new();
        let waiter = tokio::spawn(stop.clone().cancelled());
        assert!(!stop.is_triggered());
        stop.clone().trigger();
        assert!(stop.is_triggered());
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("joined");
        // Already triggered: completes at once.
        stop.cancelled().await;
    }
}

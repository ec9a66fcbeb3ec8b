//! An in-process TCP proxy between a service and one dependency, whose mode
//! can be switched at any time: pass, refuse (nothing listens), blackhole
//! (connections are accepted and bytes held, never forwarded), reset (every
//! connection is reset at once) and latency (each chunk waits before it is
//! forwarded). This machine has no netem or iptables; this is the user-space
//! equivalent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Pass,
    Refuse,
    Blackhole,
    Reset,
    Latency(Duration),
}

/// The proxy; stops listening and drops every connection when dropped.
#[derive(Debug)]
pub(crate) struct Proxy {
    pub(crate) port: u16,
    mode: watch::Sender<Mode>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
    upstream: SocketAddr,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> anyhow::Result<Arc<Self>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (mode, _) = watch::channel(Mode::Pass);
        let proxy = Arc::new(Self {
            port,
            mode,
            acceptor: Mutex::new(None),
            upstream,
        });
        proxy.listen(listener);
        Ok(proxy)
    }

    pub(crate) fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn listen(&self, listener: TcpListener) {
        let modes = self.mode.subscribe();
        let upstream = self.upstream;
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let modes = modes.clone();
                tokio::spawn(async move {
                    let _ = connection(client, upstream, modes).await;
                });
            }
        });
        *self.acceptor.lock().expect("acceptor") = Some(task);
    }

    /// Switches the mode. Refuse closes the listening socket (a connect is
    /// refused by the kernel) and resets open connections; leaving it binds
    /// the same port again.
    pub(crate) async fn set(&self, mode: Mode) -> anyhow::Result<()> {
        let was = *self.mode.borrow();
        self.mode.send_replace(mode);
        if mode == Mode::Refuse && was != Mode::Refuse {
            let task = self.acceptor.lock().expect("acceptor").take();
            if let Some(task) = task {
                task.abort();
                let _ = task.await;
            }
        } else if was == Mode::Refuse && mode != Mode::Refuse {
            let listener = TcpListener::bind(("127.0.0.1", self.port)).await?;
            self.listen(listener);
        }
        Ok(())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Reset);
        if let Some(task) = self.acceptor.lock().expect("acceptor").take() {
            task.abort();
        }
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut modes: watch::Receiver<Mode>,
) -> std::io::Result<()> {
    let mode = *modes.borrow_and_update();
    match mode {
        Mode::Reset | Mode::Refuse => return reset(client),
        Mode::Blackhole => {
            // Accepted, never answered: wait until the mode changes, then go on as it says.
            let _ = modes.changed().await;
            let now = *modes.borrow();
            if matches!(now, Mode::Reset | Mode::Refuse) {
                return reset(client);
            }
        }
        Mode::Pass | Mode::Latency(_) => {}
    }
    let server = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = tokio::spawn(pipe(client_read, server_write, modes.clone()));
    let down = tokio::spawn(pipe(server_read, client_write, modes));
    let _ = tokio::join!(up, down);
    Ok(())
}

/// Copies one direction, obeying the mode before each chunk.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut modes: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            // A reset must cut idle connections too.
            _ = wait_for_reset(&mut modes) => break,
        };
        loop {
            let mode = *modes.borrow_and_update();
            match mode {
                Mode::Pass => break,
                Mode::Latency(delay) => {
                    tokio::time::sleep(delay).await;
                    break;
                }
                Mode::Blackhole => {
                    if modes.changed().await.is_err() {
                        return;
                    }
                }
                Mode::Reset | Mode::Refuse => return abort(from, to),
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

async fn wait_for_reset(modes: &mut watch::Receiver<Mode>) {
    loop {
        let mode = *modes.borrow_and_update();
        if matches!(mode, Mode::Reset | Mode::Refuse) {
            return;
        }
        if modes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn abort(from: tokio::net::tcp::OwnedReadHalf, to: tokio::net::tcp::OwnedWriteHalf) {
    if let Ok(stream) = from.reunite(to) {
        let _ = reset(stream);
    }
}

/// Closes with a TCP RST (linger 0), as a crashed peer's kernel would.
fn reset(stream: TcpStream) -> std::io::Result<()> {
    stream.set_zero_linger()?;
    drop(stream);
    Ok(())
}

//! Test helpers: the machine's shared Redis for tests that never break it,
//! and Redis servers of a test's own (a single node, or a 3-master cluster)
//! on free ports in a temp dir, stopped and removed when dropped, also when
//! the test fails.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mosaic_cache::{CacheConfig, Redis, RedisConfig};

/// The shared Redis of the machine (only for tests that leave it alone).
pub fn shared_redis_url() -> String {
    std::env::var("MOSAIC_REDIS_URL")
        .unwrap_or_else(|_| RedisConfig::default().urls[0].expose().to_owned())
}

/// A handle on `urls` with a timeout generous enough for a loaded machine.
pub fn handle(config: RedisConfig) -> Redis {
    Redis::new(config).expect("redis handle")
}

pub fn cache_config() -> CacheConfig {
    CacheConfig {
        ttl: Duration::from_secs(30),
        lease: Duration::from_secs(2),
    }
}

/// A port nothing listens on, whose cluster bus port (+10000) is free too.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "mosaic-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `redis-server` of the test's own; killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts one on a free port, without persistence, and waits until it answers.
    pub fn start(dir: &TempDir) -> Self {
        Self::start_with(dir, free_port(), &[])
    }

    pub fn start_with(dir: &TempDir, port: u16, extra: &[&str]) -> Self {
        let mut server = Self {
            port,
            child: None,
            dir: dir.0.join(port.to_string()),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        std::fs::create_dir_all(&server.dir).expect("server dir");
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(child);
        wait_until(Duration::from_secs(10), "redis-server answers PING", || {
            cli(self.port, &["PING"]).is_some_and(|out| out.trim() == "PONG")
        });
    }

    /// Kills the server (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP: the server keeps its connections and never answers (a hung Redis).
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: the frozen server answers again.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A frozen server is woken first, so nothing of it is left stopped.
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// A 3-master Redis Cluster of the test's own (no replicas).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: TempDir,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = TempDir::new("redis-cluster");
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let port = free_port();
                let config = dir.0.join(format!("nodes-{port}.conf"));
                let config = config.to_str().expect("utf-8 path").to_owned();
                RedisServer::start_with(
                    &dir,
                    port,
                    &["--cluster-enabled", "yes", "--cluster-config-file", &config],
                )
            })
            .collect();
        let mut create = vec!["--cluster".to_owned(), "create".to_owned()];
        create.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"].map(str::to_owned));
        let out = Command::new("redis-cli")
            .args(&create)
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes, _dir: dir };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every node says `cluster_state:ok`.
    pub fn wait_ok(&self) {
        for node in &self.nodes {
            wait_until(Duration::from_secs(20), "the cluster is ok", || {
                cli(node.port, &["CLUSTER", "INFO"])
                    .is_some_and(|out| out.contains("cluster_state:ok"))
            });
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// `CLUSTER KEYSLOT key`, asked of the first node.
    pub fn keyslot(&self, key: &str) -> u16 {
        cli(self.nodes[0].port, &["CLUSTER", "KEYSLOT", key])
            .and_then(|out| out.trim().parse().ok())
            .expect("keyslot")
    }
}

/// `redis-cli -p port args...`, its output when it ran.
pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn wait_until(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `ok` on the async runtime until it holds or `limit` passes.
pub async fn eventually(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The p50, p99 and largest of `samples`.
pub fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), *samples.last().expect("samples"))
}

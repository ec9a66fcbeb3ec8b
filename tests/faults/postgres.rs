//! A PostgreSQL of the card's own: `initdb` into a temp dir, a free port,
//! run as the `postgres` OS user when the card runs as root (PostgreSQL
//! refuses root). Crashed (`pg_ctl stop -m immediate`), restarted and hung
//! (SIGSTOP of the postmaster and every backend) at will; stopped and removed
//! when dropped, also when the card panics.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The superuser `initdb` creates; `mosaic migrate` logs in as it.
pub(crate) const ADMIN: &str = "mosaic_admin";
const PASSWORD: &str = "mosaic-local";

#[derive(Debug)]
pub(crate) struct Postgres {
    pub(crate) port: u16,
    data: PathBuf,
    as_postgres: bool,
    frozen: Vec<i32>,
    _dir: TempDirGuard,
}

/// The temp dir, made traversable for the `postgres` user.
#[derive(Debug)]
struct TempDirGuard(PathBuf);

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Postgres {
    pub(crate) fn start() -> anyhow::Result<Self> {
        let root = std::env::temp_dir().join(format!(
            "mosaic-faults-pg-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&root)?;
        let as_postgres = std::fs::read_to_string("/proc/self/status")?
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0");
        let data = root.join("data");
        if as_postgres {
            // The postgres user must reach the directory and own the data.
            let mut parent = Some(root.as_path());
            while let Some(p) = parent {
                if p == Path::new("/") {
                    break;
                }
                let _ = Command::new("chmod").arg("o+x").arg(p).status();
                parent = p.parent();
            }
            run(Command::new("chown").args(["postgres:postgres"]).arg(&root))?;
        }
        let pg = Self {
            port: crate::ports::child_port(),
            data,
            as_postgres,
            frozen: Vec::new(),
            _dir: TempDirGuard(root.clone()),
        };
        let pwfile = root.join("pw");
        std::fs::write(&pwfile, PASSWORD)?;
        if as_postgres {
            run(Command::new("chown").arg("postgres:postgres").arg(&pwfile))?;
        }
        run(pg
            .as_owner("initdb")
            .arg("-D")
            .arg(&pg.data)
            .args([
                "-U",
                ADMIN,
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display())))?;
        let conf = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             max_connections = 200\nlogging_collector = off\n",
            pg.port,
            root.display()
        );
        let path = pg.data.join("postgresql.conf");
        let mut all = std::fs::read_to_string(&path)?;
        all.push_str(&conf);
        std::fs::write(&path, all)?;
        pg.start_server()?;
        Ok(pg)
    }

    fn as_owner(&self, program: &str) -> Command {
        let program = pg_bin(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let log = self.data.join("../server.log");
        run(self
            .as_owner("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(log)
            .args(args))
    }

    fn start_server(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["-w", "-t", "60", "start"])?;
        self.wait_accepting(Duration::from_secs(60))
    }

    /// A crash: `pg_ctl stop -m immediate` (no checkpoint; recovery replays WAL).
    pub(crate) fn crash(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"])
    }

    /// Starts it again after [`Postgres::crash`]; returns when it accepts connections.
    pub(crate) fn restart(&self) -> anyhow::Result<()> {
        self.start_server()
    }

    /// `pg_ctl restart -m fast`.
    #[allow(dead_code)]
    pub(crate) fn restart_fast(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["-m", "fast", "-w", "restart"])?;
        self.wait_accepting(Duration::from_secs(60))
    }

    fn wait_accepting(&self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if started.elapsed() > limit {
                bail!("postgres never accepted connections on {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn postmaster(&self) -> anyhow::Result<i32> {
        let pid = std::fs::read_to_string(self.data.join("postmaster.pid"))?;
        pid.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .context("postmaster.pid")
    }

    /// A hang: SIGSTOP the postmaster (so it forks nothing more), then every
    /// process it started (the backends holding the pools' connections).
    pub(crate) fn freeze(&mut self) -> anyhow::Result<()> {
        let master = self.postmaster()?;
        signal(master, nix::sys::signal::Signal::SIGSTOP)?;
        self.frozen = vec![master];
        for child in children(master) {
            let _ = signal(child, nix::sys::signal::Signal::SIGSTOP);
            self.frozen.push(child);
        }
        Ok(())
    }

    /// SIGCONT to every process [`Postgres::freeze`] stopped.
    pub(crate) fn thaw(&mut self) {
        for pid in self.frozen.drain(..).rev() {
            let _ = signal(pid, nix::sys::signal::Signal::SIGCONT);
        }
    }

    pub(crate) fn admin_url(&self, database: &str) -> String {
        format!(
            "postgres://{ADMIN}:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.thaw();
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }
}

/// A PostgreSQL program: on the PATH, else from the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's packages keep them there).
fn pg_bin(program: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    });
    if let Some(found) = on_path {
        return found;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin").join(program);
            bin.is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .unwrap_or_else(|| PathBuf::from(program))
}

fn signal(pid: i32, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)?;
    Ok(())
}

/// The processes whose parent is `parent` (from `/proc`).
fn children(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // pid (comm) state ppid ...: comm may hold spaces; split after the last ')'.
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

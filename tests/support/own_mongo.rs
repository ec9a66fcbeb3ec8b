//! A MongoDB-wire server of a test's own, shared by the suite
//! (`conversations_outage`) and the fault card (`tests/faults`).

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// A MongoDB-wire server of this test's own: SecantusDB from the setup's
/// `.venv` (or the command in `MOSAIC_TEST_MONGOD`, given `--host`, `--port`
/// and `--storage-path`), killed and its data removed when dropped.
pub struct OwnMongo {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnMongo {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("mosaic-mongo-{}", Uuid::now_v7().simple()));
        let mut own = Self {
            port,
            dir,
            child: None,
        };
        own.up();
        own
    }

    pub fn up(&mut self) {
        let mut command = match std::env::var("MOSAIC_TEST_MONGOD") {
            Ok(program) => Command::new(program),
            Err(_) => {
                let mut secantus = Command::new(format!(
                    "{}/.venv/bin/secantusd-py",
                    env!("CARGO_MANIFEST_DIR")
                ));
                // Acknowledged writes survive the kill below, as with a journal.
                secantus.arg("--sync-on-commit");
                secantus
            }
        };
        let child = command
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--storage-path")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the MongoDB-wire server (run deploy/local/setup.sh)");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "own MongoDB never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server (as a crash would).
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A frozen (SIGSTOPped) server is woken first, so none is left stopped.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}/outage", self.port)
    }
}

impl Drop for OwnMongo {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl OwnMongo {
    /// The server's process id while it runs (to SIGSTOP it: a hang).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `mongodb://` URL of database `db` on this server.
    pub fn url_of(&self, db: &str) -> String {
        format!("mongodb://127.0.0.1:{}/{db}", self.port)
    }
}

//! A throw-away PostgreSQL server for tests: `initdb` in a temporary folder, `postgres` on a free
//! port (TCP on loopback, its unix socket in the same folder), stopped and deleted when dropped.
//!
//! The binaries are looked for in `WEFT_PG_BIN`, then `/usr/lib/postgresql/<newest>/bin`
//! (Debian's `postgresql` package), then `PATH`. PostgreSQL refuses to run as root, so when the
//! tests run as root the server runs as the `postgres` user (which the Debian package creates),
//! else as `nobody`, through `setpriv` (which execs, so the server is our direct child). When no
//! server can be started, [`TestPostgres::start`] says why and returns None, and the test skips;
//! with `WEFT_REQUIRE_POSTGRES=1` (CI) it panics instead.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running PostgreSQL server; stopped and its folder deleted when dropped.
pub struct TestPostgres {
    child: Child,
    dir: PathBuf,
    port: u16,
}

/// Says why PostgreSQL tests cannot run, then skips (None) or, under `WEFT_REQUIRE_POSTGRES=1`,
/// fails.
fn unavailable(why: String) -> Option<TestPostgres> {
    if std::env::var("WEFT_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
        panic!("PostgreSQL is required (WEFT_REQUIRE_POSTGRES=1) but {why}");
    }
    eprintln!("skipping a PostgreSQL test: {why}");
    None
}

fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WEFT_PG_BIN") {
        return Some(dir.into());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn program(bin: &Option<PathBuf>, name: &str) -> PathBuf {
    match bin {
        Some(dir) => dir.join(name),
        None => PathBuf::from(name),
    }
}

/// The user to run the server as when we are root, and the command prefix that does it.
fn run_as() -> Result<Option<String>, String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("cannot run `id -u`: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Ok(None);
    }
    for user in ["postgres", "nobody"] {
        let known = Command::new("id")
            .arg(user)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if known {
            return Ok(Some(user.to_owned()));
        }
    }
    Err("running as root and neither `postgres` nor `nobody` exists to run the server".into())
}

fn command(user: &Option<String>, program: &Path) -> Command {
    match user {
        Some(user) => {
            let mut command = Command::new("setpriv");
            command
                .arg(format!("--reuid={user}"))
                .arg(format!("--regid={user}"))
                .arg("--init-groups")
                .arg(program);
            command
        }
        None => Command::new(program),
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl TestPostgres {
    /// Starts a fresh server, or None (with the reason on stderr) when it cannot.
    pub fn start() -> Option<TestPostgres> {
        match TestPostgres::try_start() {
            Ok(server) => Some(server),
            Err(why) => unavailable(why),
        }
    }

    fn try_start() -> Result<TestPostgres, String> {
        let bin = bin_dir();
        let user = run_as()?;
        let dir = std::env::temp_dir().join(format!(
            "weft-pg-{}-{}",
            std::process::id(),
            free_port().map_err(|e| e.to_string())?
        ));
        let data = dir.join("data");
        std::fs::create_dir_all(&data).map_err(|e| format!("cannot create {dir:?}: {e}"))?;
        if let Some(user) = &user {
            // The server's user owns the folder (data and socket); others may pass through.
            let chown = Command::new("chown")
                .args(["-R", &format!("{user}:"), &dir.to_string_lossy()])
                .status()
                .map_err(|e| format!("cannot run chown: {e}"))?;
            if !chown.success() {
                return Err(format!("cannot give {dir:?} to {user}"));
            }
        }
        let initdb = command(&user, &program(&bin, "initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "weft", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run initdb (is PostgreSQL installed?): {e}"))?;
        if !initdb.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&initdb.stderr).trim()
            ));
        }
        let port = free_port().map_err(|e| e.to_string())?;
        let child = command(&user, &program(&bin, "postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "max_connections=200", "-c", "shared_buffers=16MB"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start postgres: {e}"))?;
        let mut server = TestPostgres { child, dir, port };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("postgres exited at start: {status}"));
            }
            let ready = Command::new(program(&bin, "pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "weft"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        server.stop();
        Err("postgres did not accept connections within 30 s".into())
    }

    /// The URL of a database named `name`, created if needed (`postgres` always exists).
    pub fn url(&self, name: &str) -> String {
        if name != "postgres" {
            let _ = Command::new(program(&bin_dir(), "createdb"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "weft",
                    name,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        format!("postgres://weft@127.0.0.1:{}/{name}", self.port)
    }

    /// The folder holding the data and the unix socket.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn stop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown (closes sessions, no checkpoint wait).
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

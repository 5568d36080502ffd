//! Running a real PostgreSQL on a restored data directory, as the `postgres` user when
//! the tests run as root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::fixture_meta;

/// The PostgreSQL server binaries of the fixture's major version.
pub fn pg_bin() -> PathBuf {
    let major = fixture_meta("PG_VERSION")
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let bin = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    assert!(
        bin.join("postgres").exists(),
        "PostgreSQL {major} is needed (apt-get install postgresql-{major}); scripts/test.sh installs it"
    );
    bin
}

/// Runs a command as the `postgres` user when we are root (PostgreSQL refuses root).
pub fn as_postgres(program: &Path) -> Command {
    if wale::users::effective_uid() == 0 {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

pub fn run_ok(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Gives a tree to the `postgres` user when running as root.
pub fn give_to_postgres(path: &Path) {
    if wale::users::effective_uid() == 0 {
        let mut chown = Command::new("chown");
        chown.arg("-R").arg("postgres:postgres").arg(path);
        run_ok(chown, "chown");
    }
}

/// A PostgreSQL data directory being recovered; stopped on drop.
pub struct Recovery {
    pub bin: PathBuf,
    pub pgdata: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
}

impl Recovery {
    pub fn psql(&self, args: &[&str]) -> String {
        let mut cmd = as_postgres(&self.bin.join("psql"));
        cmd.args(["-X", "-q", "-h"]).arg(&self.socket_dir);
        cmd.args(["-p", &self.port.to_string(), "-d", "postgres"])
            .args(args);
        run_ok(cmd, "psql")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_until_promoted(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            let mut cmd = as_postgres(&self.bin.join("psql"));
            cmd.args(["-X", "-q", "-A", "-t", "-h"])
                .arg(&self.socket_dir);
            cmd.args([
                "-p",
                &self.port.to_string(),
                "-d",
                "postgres",
                "-c",
                "select pg_is_in_recovery()",
            ]);
            if let Ok(out) = cmd.output()
                && String::from_utf8_lossy(&out.stdout).trim() == "f"
            {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "recovery did not finish; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Recovery {
    fn drop(&mut self) {
        let mut cmd = as_postgres(&self.bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = cmd.output();
    }
}

/// Writes the configuration a recovery needs: a private socket, `restore_command`, and
/// `recovery.signal`, plus `extra` settings.
pub fn write_recovery_conf(
    pgdata: &Path,
    port: u16,
    socket_dir: &Path,
    restore_command: &str,
    extra: &str,
) {
    let conf = format!(
        "port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{}'\n\
         restore_command = '{restore_command}'\nlog_line_prefix = '%m [%p] '\n{extra}",
        socket_dir.display()
    );
    std::fs::write(pgdata.join("postgresql.conf"), conf).unwrap();
    std::fs::write(pgdata.join("pg_hba.conf"), "local all all trust\n").unwrap();
    std::fs::write(pgdata.join("pg_ident.conf"), "").unwrap();
    std::fs::write(pgdata.join("recovery.signal"), "").unwrap();
    std::fs::set_permissions(pgdata, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
}

impl Recovery {
    /// Starts PostgreSQL on `pgdata` (already configured) and returns once it runs.
    pub fn start(pgdata: &Path, socket_dir: &Path, port: u16, log: PathBuf) -> Recovery {
        let bin = pg_bin();
        let recovery = Recovery {
            bin: bin.clone(),
            pgdata: pgdata.to_path_buf(),
            socket_dir: socket_dir.to_path_buf(),
            port,
            log,
        };
        let mut start = as_postgres(&bin.join("pg_ctl"));
        start
            .arg("-D")
            .arg(pgdata)
            .arg("-l")
            .arg(&recovery.log)
            .args(["-w", "-t", "600", "start"]);
        let started = start.output().unwrap();
        assert!(
            started.status.success(),
            "pg_ctl start failed; log:\n{}",
            recovery.log_text()
        );
        recovery
    }
}

/// A TCP port free on both loopback addresses, never handed out twice in this run:
/// the one allocator for servers the tests start.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 1000) as u16 * 10,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        let free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("::1", port)).is_ok();
        if free {
            return port;
        }
    }
}

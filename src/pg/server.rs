//! The PostgreSQL server on this machine: finding the binaries of a major version, the
//! data directory's owner, a running server through `postmaster.pid`, and running
//! `pg_ctl` and `psql` as the owner (PostgreSQL refuses to run as root).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::datadir::DataDir;
use crate::users::{self, User};

/// Server binaries of one major version.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The directory holding `postgres`, `pg_ctl`, `psql`.
    pub dir: PathBuf,
    /// The major version `postgres --version` reported.
    pub major: u32,
    /// Its whole version line, e.g. `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
    pub version_line: String,
}

/// Why no suitable binaries were found.
#[derive(Debug, thiserror::Error)]
#[error(
    "PostgreSQL {major} server binaries not found (looked in {looked}); install postgresql-{major} (Debian/Ubuntu) or postgresql{major}-server (PGDG on RHEL), or pass --pg-bin DIR"
)]
pub struct NotFound {
    /// The major version wanted.
    pub major: u32,
    /// Where wale looked, and what it found there.
    pub looked: String,
}

impl Binaries {
    /// Finds `postgres` of major version `major`: `pg_bin` when given, then Debian's
    /// `/usr/lib/postgresql/N/bin`, PGDG's `/usr/pgsql-N/bin`, then `PATH`; each checked
    /// with `postgres --version`.
    pub fn find(major: u32, pg_bin: Option<&Path>) -> Result<Binaries, NotFound> {
        match pg_bin {
            Some(dir) => find_among(major, vec![dir.to_path_buf()], true),
            None => find_among(major, usual_places(major), false),
        }
    }

    /// The binaries of the server of a data directory: `pg_bin` when given; else the
    /// directory of the running postmaster's own executable, then the one `wale restore`
    /// recorded, then the usual places. A restore made with `--pg-bin` needs it only once.
    pub fn for_data_dir(
        major: u32,
        pg_bin: Option<&Path>,
        data_dir: &DataDir,
        running: Option<&PidFile>,
    ) -> Result<Binaries, NotFound> {
        if pg_bin.is_some() {
            return Binaries::find(major, pg_bin);
        }
        let mut candidates = Vec::new();
        if let Some(dir) = running.and_then(PidFile::executable_dir) {
            candidates.push(dir);
        }
        if let Some(record) = data_dir.restore_record() {
            candidates.push(record.pg_bin);
        }
        candidates.extend(usual_places(major));
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|dir| seen.insert(dir.clone()));
        find_among(major, candidates, false)
    }

    /// A `psql` for queries: this directory's, else one of the same or a newer major
    /// (older servers understand a newer client), else any found, with a note.
    pub fn psql(&self) -> PathBuf {
        let own = self.program("psql");
        if own.is_file() {
            return own;
        }
        let mut found: Vec<(u32, PathBuf)> = psql_candidates()
            .into_iter()
            .filter(|p| p.is_file())
            .filter_map(|p| version_of(&p).map(|(major, _)| (major, p)))
            .collect();
        found.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
        let newest = found.first().cloned();
        let choice = found
            .iter()
            .filter(|(major, _)| *major >= self.major)
            .min_by_key(|(major, _)| *major)
            .cloned()
            .or(newest);
        match choice {
            Some((major, path)) => {
                if major < self.major {
                    tracing::debug!(
                        "no psql {} or newer here; asking the server with {} (psql {major})",
                        self.major,
                        path.display()
                    );
                }
                path
            }
            None => own,
        }
    }

    /// The path of one of the binaries.
    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Where this server loads libraries from (`pg_config --pkglibdir`, or `../lib`).
    pub fn pkglibdir(&self) -> PathBuf {
        let pg_config = self.program("pg_config");
        if let Ok(out) = Command::new(&pg_config).arg("--pkglibdir").output()
            && out.status.success()
        {
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !text.is_empty() {
                return PathBuf::from(text);
            }
        }
        self.dir
            .parent()
            .map_or_else(|| self.dir.join("../lib"), |p| p.join("lib"))
    }
}

/// Debian's, PGDG's, then `PATH`.
fn usual_places(major: u32) -> Vec<PathBuf> {
    let mut places = vec![
        PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
        PathBuf::from(format!("/usr/pgsql-{major}/bin")),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        places.extend(std::env::split_paths(&path));
    }
    places
}

/// Every `psql` in the usual places of any major, and on `PATH`.
fn psql_candidates() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    for pattern_dir in ["/usr/lib/postgresql", "/usr"] {
        let Ok(entries) = std::fs::read_dir(pattern_dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let versioned = if pattern_dir == "/usr" {
                name.strip_prefix("pgsql-")
                    .is_some_and(|v| v.parse::<u32>().is_ok())
            } else {
                name.parse::<u32>().is_ok()
            };
            if versioned {
                candidates.push(entry.path().join("bin/psql"));
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("psql")));
    }
    candidates
}

/// The first directory of `candidates` whose `postgres` is of major `major`. Only an
/// `explicit` choice reports directories without a `postgres` in them.
fn find_among(major: u32, candidates: Vec<PathBuf>, explicit: bool) -> Result<Binaries, NotFound> {
    let mut looked = Vec::new();
    for dir in candidates {
        let postgres = dir.join("postgres");
        if !postgres.is_file() {
            if explicit {
                looked.push(format!("{} (no postgres there)", dir.display()));
            }
            continue;
        }
        match version_of(&postgres) {
            Some((found, line)) if found == major => {
                return Ok(Binaries {
                    dir,
                    major,
                    version_line: line,
                });
            }
            Some((found, _)) => looked.push(format!("{} (PostgreSQL {found})", dir.display())),
            None => looked.push(format!("{} (postgres --version failed)", dir.display())),
        }
    }
    if !explicit {
        looked.insert(
            0,
            format!("/usr/lib/postgresql/{major}/bin, /usr/pgsql-{major}/bin, PATH"),
        );
    }
    Err(NotFound {
        major,
        looked: looked.join("; "),
    })
}

/// Runs `postgres --version` and reads the major version from
/// `postgres (PostgreSQL) 15.18 (...)`.
fn version_of(postgres: &Path) -> Option<(u32, String)> {
    let out = Command::new(postgres).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let version = line.split_whitespace().nth(2)?;
    let major = version.split(['.', 'b', 'r', 'd']).next()?.parse().ok()?;
    Some((major, line))
}

/// The major version a `PG_VERSION` file or `extended_version.txt` names: `15`, or
/// `PostgreSQL 15.18 (Debian …) on x86_64 …`.
pub fn major_of_version_text(text: &str) -> Option<u32> {
    let text = text.trim();
    let version = text.strip_prefix("PostgreSQL ").unwrap_or(text);
    let number = version.split(|c: char| !c.is_ascii_digit()).next()?;
    number.parse().ok().filter(|&m| m >= 9)
}

/// The server's log in a data directory `wale restore` made: `pg_ctl -l` writes it there
/// (the logging collector is off), so every message about a failure is in one place.
pub fn log_path(pgdata: &Path) -> PathBuf {
    pgdata.join("log/postgresql.log")
}

/// The owner of a data directory: who the server must run as.
pub fn owner_of(pgdata: &Path) -> std::io::Result<User> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(pgdata)?;
    Ok(users::user_by_uid(meta.uid()).unwrap_or(User {
        name: meta.uid().to_string(),
        uid: meta.uid(),
        gid: meta.gid(),
        home: "/".into(),
    }))
}

/// A command that runs as `user`: as is when that is who we are, otherwise (only
/// possible as root) with its ids, its groups only, and its home.
pub fn command_as(program: &Path, user: &User) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(program);
    if users::effective_uid() != user.uid {
        // std drops the supplementary groups when root switches user.
        command.uid(user.uid).gid(user.gid);
        command.env("HOME", &user.home).env("USER", &user.name);
    }
    command.env_remove("PGDATA").env("LC_ALL", "C");
    command
}

/// `postmaster.pid` of a data directory: the server's process id, port, socket
/// directory and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidFile {
    /// The postmaster's process id.
    pub pid: i32,
    /// The port it listens on.
    pub port: u16,
    /// The first Unix-socket directory, if it listens on one.
    pub socket_dir: Option<PathBuf>,
    /// `starting`, `stopping`, `ready`, `standby` (PostgreSQL 10+ writes it).
    pub status: String,
}

impl PidFile {
    /// Reads it; `None` when there is no such file.
    pub fn read(pgdata: &Path) -> std::io::Result<Option<PidFile>> {
        let text = match std::fs::read_to_string(pgdata.join("postmaster.pid")) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let lines: Vec<&str> = text.lines().collect();
        let field = |i: usize| lines.get(i).map(|l| l.trim()).unwrap_or("");
        Ok(Some(PidFile {
            pid: field(0).parse().unwrap_or(0),
            port: field(3).parse().unwrap_or(5432),
            socket_dir: Some(field(4)).filter(|s| !s.is_empty()).map(PathBuf::from),
            status: field(7).to_string(),
        }))
    }

    /// The directory of the running postmaster's executable (`/proc/PID/exe`), when it
    /// can be read and still exists.
    pub fn executable_dir(&self) -> Option<PathBuf> {
        let exe = std::fs::read_link(format!("/proc/{}/exe", self.pid)).ok()?;
        exe.is_file().then(|| exe.parent().map(Path::to_path_buf))?
    }

    /// Whether its process still runs (a killed postmaster not yet reaped, a zombie,
    /// does not count).
    pub fn is_alive(&self) -> bool {
        process_state(self.pid) == ProcessState::Running
    }
}

/// Ends the recovery of the server on `pgdata` as `pg_ctl promote` does: the `promote`
/// signal file, then SIGUSR1 to the postmaster. PostgreSQL looks for it only when it has
/// no more WAL to replay, so the caller makes sure everything there is has reached it.
pub fn request_promotion(pgdata: &Path) -> std::io::Result<()> {
    let pid = PidFile::read(pgdata)?
        .and_then(|p| rustix::process::Pid::from_raw(p.pid))
        .ok_or_else(|| std::io::Error::other(format!("{}: no postmaster.pid", pgdata.display())))?;
    crate::durable::replace_file(&pgdata.join("promote"), b"")?;
    rustix::process::kill_process(pid, rustix::process::Signal::USR1)?;
    Ok(())
}

/// What the kernel says of a process id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProcessState {
    /// It runs.
    Running,
    /// It has exited and waits for its parent to reap it: PostgreSQL still counts it as
    /// the owner of its lock file.
    Unreaped,
    /// There is no such process.
    Gone,
}

/// `/proc/PID/stat`'s state, read once (a zombie reaped between two checks cannot look
/// alive); `kill(pid, 0)` where `/proc` does not answer.
fn process_state(pid: i32) -> ProcessState {
    let Some(id) = rustix::process::Pid::from_raw(pid) else {
        return ProcessState::Gone;
    };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // `pid (comm) state …`: the state follows the last `)`.
            let state = stat
                .rfind(')')
                .and_then(|end| stat[end + 1..].split_whitespace().next());
            match state {
                Some("Z" | "X" | "x") => ProcessState::Unreaped,
                _ => ProcessState::Running,
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ProcessState::Gone,
        Err(_) => match rustix::process::test_kill_process(id) {
            Ok(()) | Err(rustix::io::Errno::PERM) => ProcessState::Running,
            Err(_) => ProcessState::Gone,
        },
    }
}

/// The processes still holding a data directory after its server stopped or was
/// killed: the postmaster named in `postmaster.pid` while it exists at all (PostgreSQL
/// refuses to start while even its zombie does), and any process working in the
/// directory as `postgres` (the old server's children, which keep its shared memory
/// attached until they notice their postmaster is gone; a user's shell there does not
/// count).
pub fn leftover_processes(pgdata: &Path) -> Vec<Leftover> {
    let mut leftovers = Vec::new();
    if let Ok(Some(pid)) = PidFile::read(pgdata) {
        match process_state(pid.pid) {
            ProcessState::Running => leftovers.push(Leftover {
                pid: pid.pid,
                unreaped: false,
            }),
            ProcessState::Unreaped => leftovers.push(Leftover {
                pid: pid.pid,
                unreaped: true,
            }),
            ProcessState::Gone => {}
        }
    }
    let Ok(home) = pgdata.canonicalize() else {
        return leftovers;
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return leftovers;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let is_postgres = std::fs::read_link(entry.path().join("exe"))
            .is_ok_and(|exe| exe.file_name().is_some_and(|name| name == "postgres"));
        let works_there = is_postgres
            && std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd == home);
        if works_there && leftovers.iter().all(|l| l.pid != pid) {
            leftovers.push(Leftover {
                pid,
                unreaped: false,
            });
        }
    }
    leftovers
}

/// A process of an old server that has not gone yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leftover {
    /// Its process id.
    pub pid: i32,
    /// It has exited, but its parent has not reaped it.
    pub unreaped: bool,
}

/// A running server reached over its Unix socket with `psql`, as the data directory's
/// owner.
#[derive(Debug, Clone)]
pub struct Connection {
    psql: PathBuf,
    owner: User,
    socket_dir: PathBuf,
    port: u16,
}

/// Why a query through `psql` gave no answer, with the server's address in the message.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// `psql` could not be run.
    #[error("cannot run {}: {source}", psql.display())]
    Spawn {
        /// The `psql` binary.
        psql: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `psql` ran and failed (no server, refused, an SQL error).
    #[error("psql as {user} on {}:{port}: {stderr}", socket_dir.display())]
    Failed {
        /// Who asked.
        user: String,
        /// The server's socket directory.
        socket_dir: PathBuf,
        /// Its port.
        port: u16,
        /// What `psql` said, on one line.
        stderr: String,
    },
    /// The query returned no rows.
    #[error("no result for {0}")]
    NoResult(String),
}

impl Connection {
    /// The server described by `pid`, through the `psql` of `binaries`.
    pub fn new(binaries: &Binaries, owner: &User, pid: &PidFile) -> Option<Connection> {
        Some(Connection {
            psql: binaries.psql(),
            owner: owner.clone(),
            socket_dir: pid.socket_dir.clone()?,
            port: pid.port,
        })
    }

    /// Runs one query; returns its rows, fields separated by `|`.
    pub fn query(&self, sql: &str) -> Result<Vec<Vec<String>>, QueryError> {
        let out = self.psql(sql)?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('|').map(str::to_string).collect())
            .collect())
    }

    /// Runs one query that returns one value.
    pub fn value(&self, sql: &str) -> Result<String, QueryError> {
        self.query(sql)?
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next())
            .ok_or_else(|| QueryError::NoResult(sql.to_string()))
    }

    fn psql(&self, sql: &str) -> Result<Output, QueryError> {
        let out = command_as(&self.psql, &self.owner)
            .args(["-X", "-q", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", &self.owner.name, "-d", "postgres", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS")
            .output()
            .map_err(|source| QueryError::Spawn {
                psql: self.psql.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(QueryError::Failed {
                user: self.owner.name.clone(),
                socket_dir: self.socket_dir.clone(),
                port: self.port,
                stderr: String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .replace('\n', " "),
            })
        }
    }
}

/// The one line that explains why a server did not start, from the end of its log: the
/// usual causes in words an operator can act on, else the last FATAL or PANIC line.
pub fn explain_startup_failure(log: &str) -> Option<String> {
    let fatal = log
        .lines()
        .rev()
        .find(|l| l.contains("FATAL:") || l.contains("PANIC:"))?;
    let message = fatal
        .split_once("FATAL:")
        .or_else(|| fatal.split_once("PANIC:"))
        .map_or(fatal, |(_, m)| m)
        .trim();
    let detail = if message.starts_with("could not access file") {
        format!("{message}: a preload library is not installed here (shared_preload_libraries)")
    } else if message.contains("insufficient parameter settings")
        || message.contains("lower setting than on the")
    {
        let hint = log
            .lines()
            .rev()
            .find(|l| l.contains("is a lower setting than on the"))
            .map(|l| {
                l.split_once("DETAIL:")
                    .map_or(l, |(_, h)| h)
                    .trim()
                    .to_string()
            });
        format!(
            "hot standby needs settings at least as high as the primary's: {}",
            hint.unwrap_or_else(|| message.to_string())
        )
    } else if message.contains("database files are incompatible with server") {
        format!("{message}: these binaries are of another major version")
    } else if message.contains("is not a child of this server's history") {
        format!("{message}: the archive's timeline history does not contain this backup")
    } else if message.contains("WAL file is from different database system") {
        format!("{message}: the archive prefix belongs to another cluster")
    } else if message.contains("could not create any TCP/IP sockets") {
        let hint = log
            .lines()
            .rev()
            .find(|l| l.contains("could not bind"))
            .and_then(|l| l.split_once("LOG:").map(|(_, h)| h.trim().to_string()));
        format!(
            "{message}: {}; choose another --port",
            hint.unwrap_or_else(|| "the port is in use".into())
        )
    } else if message.contains("recovery ended before configured recovery target was reached") {
        format!(
            "{message}: the archive ends before the target (a restore point name, time or LSN that the WAL never reaches)"
        )
    } else {
        message.to_string()
    };
    Some(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No server, no promotion request: the error names the missing pid file, and no
    /// `promote` file is left for a server started later to act on.
    #[test]
    fn a_promotion_without_a_server_is_refused_and_leaves_no_signal() {
        let pgdata = tempfile::tempdir().unwrap();
        let err = request_promotion(pgdata.path()).unwrap_err();
        assert!(err.to_string().contains("no postmaster.pid"), "{err}");
        assert!(!pgdata.path().join("promote").exists());
    }

    #[test]
    fn versions_read_from_files_and_banners() {
        assert_eq!(major_of_version_text("15\n"), Some(15));
        assert_eq!(
            major_of_version_text("PostgreSQL 15.18 (Debian 15.18-0+deb12u1) on x86_64"),
            Some(15)
        );
        assert_eq!(major_of_version_text("PostgreSQL 9.6.3"), Some(9));
        assert_eq!(major_of_version_text("nonsense"), None);
    }

    #[test]
    fn pid_files_parse() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(PidFile::read(dir.path()).unwrap(), None);
        std::fs::write(
            dir.path().join("postmaster.pid"),
            format!(
                "{}\n/data\n1700000000\n5433\n/run/postgresql\nlocalhost\n  1234  5678\nstandby\n",
                std::process::id()
            ),
        )
        .unwrap();
        let pid = PidFile::read(dir.path()).unwrap().unwrap();
        assert_eq!(pid.port, 5433);
        assert_eq!(
            pid.socket_dir.as_deref(),
            Some(Path::new("/run/postgresql"))
        );
        assert_eq!(pid.status, "standby");
        assert!(pid.is_alive());
    }

    #[test]
    fn startup_failures_are_explained() {
        let log = "2026-11-30 LOG:  starting\n2026-11-30 FATAL:  could not access file \"heroku_gatekeeper\": No such file or directory\n";
        assert!(
            explain_startup_failure(log)
                .unwrap()
                .contains("preload library is not installed")
        );
        let log = "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use\nFATAL:  could not create any TCP/IP sockets\n";
        assert!(
            explain_startup_failure(log)
                .unwrap()
                .contains("Address already in use")
        );
        let log = "WARNING:  hot standby is not possible because of insufficient parameter settings\nDETAIL:  max_connections = 100 is a lower setting than on the primary server, where its value was 500.\nFATAL:  recovery aborted because of insufficient parameter settings\n";
        let line = explain_startup_failure(log).unwrap();
        assert!(line.contains("hot standby needs"), "{line}");
        assert_eq!(explain_startup_failure("LOG: fine\n"), None);
    }
}

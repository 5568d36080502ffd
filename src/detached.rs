//! Background wale processes started by a short-lived one (`wal-fetch` starts the
//! prefetcher and the WAL stream): this same executable, detached so that it outlives
//! the `restore_command` that started it.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// Starts `wale <relaunch> <args>`: this executable (not `argv[0]` or `PATH`), in its own
/// session, stdio on /dev/null, not waited for (it is reparented to init). `what` names
/// it in the warning when it cannot start.
pub fn spawn(relaunch: &[OsString], args: &[OsString], what: &str) {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = Command::new(exe);
    cmd.args(relaunch)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Its own session, so that the signals PostgreSQL sends to the restore_command's
    // process group at shutdown do not cut its work short.
    // SAFETY: pre_exec runs between fork and exec; setsid is async-signal-safe,
    // allocates nothing and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            let _ = rustix::process::setsid();
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(child) => drop(child),
        Err(err) => tracing::warn!("cannot start {what}: {err}"),
    }
}

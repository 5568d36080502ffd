//! Crash-safe files: a file is either absent or complete at its final name.
//!
//! [`StagedFile`] is written where the destination will live (same directory, so the same
//! file system) and becomes visible only in [`StagedFile::commit`], after an fsync, by an
//! atomic link or rename, followed by an fsync of the directory. On Linux the staging file
//! is anonymous (`O_TMPFILE`): if the process is killed, even with SIGKILL, nothing is left
//! behind. Where that is unavailable a hidden, uniquely named file is used and removed on
//! drop. The one exception, [`overwrite_in_place`], is for advisory notes rewritten many
//! times a second whose contents check themselves (the prefetch hint).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// A file being written for `dest`, invisible until committed.
pub struct StagedFile {
    file: File,
    dest: PathBuf,
    /// The visible temporary name, when `O_TMPFILE` could not be used.
    named: Option<PathBuf>,
}

impl StagedFile {
    /// Starts a file that will become `dest`. Fails if `dest`'s directory is missing.
    pub fn create(dest: &Path) -> io::Result<StagedFile> {
        let dir = parent_dir(dest);
        match OpenOptions::new()
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(dir)
        {
            Ok(file) => Ok(StagedFile {
                file,
                dest: dest.to_path_buf(),
                named: None,
            }),
            // No O_TMPFILE support in this kernel or file system: use a named file.
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
                ) =>
            {
                Self::create_named(dest)
            }
            Err(err) => Err(err),
        }
    }

    /// The fallback: a hidden, uniquely named file beside `dest`, removed on drop.
    fn create_named(dest: &Path) -> io::Result<StagedFile> {
        let (file, path) = create_named_temp(dest)?;
        Ok(StagedFile {
            file,
            dest: dest.to_path_buf(),
            named: Some(path),
        })
    }

    /// The file to write into.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// A writer that starts the disk writeback of each completed stretch while later
    /// bytes are still being produced, so that [`StagedFile::commit`]'s fsync waits only
    /// for the tail. For one large file written at speed (a WAL segment).
    pub fn early_writeback(&mut self) -> EarlyWriteback<'_> {
        EarlyWriteback::new(&mut self.file)
    }

    /// Makes the file durable and visible at its destination, replacing what was there.
    pub fn commit(self) -> io::Result<()> {
        self.file.sync_all()?;
        let dir = parent_dir(&self.dest).to_path_buf();
        self.publish()?;
        sync_dir(&dir)
    }

    /// Makes the file visible at its destination atomically, replacing what was there,
    /// without waiting for the disk: for a file whose reader makes it durable itself and
    /// never relies on it surviving a crash (PostgreSQL's `RECOVERYXLOG`). A crash may
    /// lose the name or the contents; it never shows a reader a partial file before it.
    pub fn publish(mut self) -> io::Result<()> {
        match self.named.take() {
            Some(path) => std::fs::rename(&path, &self.dest).inspect_err(|_| {
                let _ = std::fs::remove_file(&path);
            }),
            None => self.link_anonymous(),
        }
    }

    /// Gives the anonymous file its name: directly when the name is free, else through a
    /// temporary name and a rename so that an existing file is replaced atomically.
    fn link_anonymous(&self) -> io::Result<()> {
        let fd_path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        match link_following(Path::new(&fd_path), &self.dest) {
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                let temp = temp_name(&self.dest);
                link_following(Path::new(&fd_path), &temp)?;
                std::fs::rename(&temp, &self.dest).inspect_err(|_| {
                    let _ = std::fs::remove_file(&temp);
                })
            }
            other => other,
        }
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if let Some(path) = &self.named {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Makes a finished file durable under its final name: fsync the file, rename it from
/// `from` to `to`, fsync the directory. A failed rename leaves `from` for the caller.
pub fn rename_into_place(file: File, from: &Path, to: &Path) -> io::Result<()> {
    file.sync_all()?;
    drop(file);
    std::fs::rename(from, to)?;
    sync_dir(parent_dir(to))
}

/// Makes a directory's entries durable (a new or renamed name in it survives a crash).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Flushes the whole file system holding `place` (`syncfs`): one call for a restore's
/// thousands of files instead of one fsync each.
pub fn sync_file_system(place: &Path) -> io::Result<()> {
    let dir = File::open(place)?;
    rustix::fs::syncfs(&dir).map_err(io::Error::from)
}

/// Writes a whole small file durably: absent or complete with `mode` (and, when given,
/// owned by `owner`'s uid and gid), never half-written, replacing what was there. For
/// configuration and control files (`postgresql.conf`, `tablespace_map`, an envdir).
pub fn write_file(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let mut staged = stage(path, bytes, mode)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(staged.file(), Some(uid), Some(gid))?;
    }
    staged.commit()
}

/// Replaces a small file atomically without waiting for the disk (mode 0644): a reader
/// sees the old contents or the new, never a part; a crash may keep the old. For advisory
/// state files (the prefetch area's notes, what `wal-fetch` records for `status`).
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    stage(path, bytes, 0o644)?.publish()
}

/// Rewrites a small advisory file in place: one write at offset 0 of a file that keeps
/// its inode (created with mode 0644 the first time, never through a symlink), cut to
/// `bytes` only if it was longer. Unlike [`replace_file`] no inode is allocated and none
/// freed, which on ext4 is most of the cost of a note rewritten at every `wal-fetch`. A
/// crash may keep the old bytes; a reader racing the write may see a mix of the old and
/// the new, so the contents must check themselves (the prefetch hint carries a checksum).
pub fn overwrite_in_place(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all_at(bytes, 0)?;
    if file.metadata()?.len() > bytes.len() as u64 {
        file.set_len(bytes.len() as u64)?;
    }
    Ok(())
}

/// `bytes` staged for `path` with `mode`, not yet visible.
fn stage(path: &Path, bytes: &[u8], mode: u32) -> io::Result<StagedFile> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut staged = StagedFile::create(path)?;
    staged.file().write_all(bytes)?;
    staged
        .file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(staged)
}

/// `linkat(…, AT_SYMLINK_FOLLOW)`, which links the file behind a `/proc/self/fd` entry.
fn link_following(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{AtFlags, CWD, linkat};
    linkat(CWD, from, CWD, to, AtFlags::SYMLINK_FOLLOW).map_err(io::Error::from)
}

/// Creates a new file (mode 0600) that must not exist yet, refusing to follow a symlink
/// planted at its name.
pub fn create_new_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn create_named_temp(dest: &Path) -> io::Result<(File, PathBuf)> {
    loop {
        let path = temp_name(dest);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => return Ok((file, path)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        }
    }
}

/// `.<name>.wale-<pid>-<random>` beside `dest`.
fn temp_name(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    parent_dir(dest).join(format!(
        ".{name}.wale-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// How much is written before its writeback is started.
const WRITEBACK_STRETCH: u64 = 1024 * 1024;

/// A writer over a file that queues the writeback of every completed megabyte, so that
/// a final fsync finds most of the file already on its way to disk (see
/// [`StagedFile::early_writeback`]).
pub struct EarlyWriteback<'a> {
    file: &'a mut File,
    written: u64,
    submitted: u64,
}

impl<'a> EarlyWriteback<'a> {
    /// Wraps `file`, written from its current start (offset 0).
    pub fn new(file: &'a mut File) -> EarlyWriteback<'a> {
        EarlyWriteback {
            file,
            written: 0,
            submitted: 0,
        }
    }
}

impl io::Write for EarlyWriteback<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.submitted >= WRITEBACK_STRETCH {
            // SAFETY: plain syscall on an open descriptor; SYNC_FILE_RANGE_WRITE only
            // queues writeback and its failure changes nothing (commit's fsync decides).
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.submitted as libc::off64_t,
                    (self.written - self.submitted) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.submitted = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Reads a small regular file from a restored directory without following a symlink the
/// archive may have put there; `None` when absent. At most 64 KiB.
pub fn read_small_file(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    const LIMIT: u64 = 64 * 1024;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    file.take(LIMIT + 1).read_to_string(&mut text)?;
    if text.len() as u64 > LIMIT {
        return Err(std::io::Error::other("larger than 64 KiB"));
    }
    Ok(Some(text))
}

/// Takes an exclusive `flock` on `path` (created 0600 if missing) unless another
/// process holds it: the one-process-per-directory rule of the prefetcher and the WAL
/// stream. The lock lasts as long as the file returned.
pub fn try_lock(path: &Path) -> io::Result<Option<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(err)) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn nothing_is_visible_until_commit_or_publish_and_both_replace() {
        let finishers: [fn(StagedFile) -> io::Result<()>; 2] =
            [StagedFile::commit, StagedFile::publish];
        for finish in finishers {
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("RECOVERYXLOG");
            std::fs::write(&dest, "old").unwrap();
            let mut staged = StagedFile::create(&dest).unwrap();
            staged.file().write_all(b"new contents").unwrap();
            assert_eq!(std::fs::read(&dest).unwrap(), b"old");
            finish(staged).unwrap();
            assert_eq!(std::fs::read(&dest).unwrap(), b"new contents");
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["RECOVERYXLOG"]);
        }
    }

    #[test]
    fn the_named_fallback_commits_and_cleans_up_too() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        std::fs::write(&dest, "old").unwrap();
        let mut staged = StagedFile::create_named(&dest).unwrap();
        staged.file().write_all(b"new").unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "the temp file is visible"
        );
        staged.publish().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        let dropped = StagedFile::create_named(&dir.path().join("other")).unwrap();
        drop(dropped);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["RECOVERYXLOG"]);
    }

    #[test]
    fn early_writeback_writes_exactly_what_it_is_given() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("segment");
        let data: Vec<u8> = (0..3 * WRITEBACK_STRETCH as usize + 12345)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let mut staged = StagedFile::create(&dest).unwrap();
        let mut writer = staged.early_writeback();
        for piece in data.chunks(100_000) {
            writer.write_all(piece).unwrap();
        }
        writer.flush().unwrap();
        // Writeback was started along the way, never for more than was written.
        assert!(writer.submitted >= 2 * WRITEBACK_STRETCH);
        assert!(writer.written - writer.submitted < WRITEBACK_STRETCH + 100_000);
        staged.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
    }

    #[test]
    fn whole_files_get_their_mode_and_replace() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("postgresql.conf");
        write_file(&path, b"a = 1\n", 0o640, None).unwrap();
        write_file(&path, b"a = 2\n", 0o600, None).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a = 2\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn overwriting_in_place_keeps_the_inode_and_cuts_a_longer_tail() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".next");
        overwrite_in_place(&path, b"a longer first note\n").unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        overwrite_in_place(&path, b"second\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second\n");
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
        std::os::unix::fs::symlink(&path, dir.path().join("link")).unwrap();
        assert!(overwrite_in_place(&dir.path().join("link"), b"x").is_err());
    }

    #[test]
    fn dropping_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x");
        let mut staged = StagedFile::create(&dest).unwrap();
        staged.file().write_all(b"partial").unwrap();
        drop(staged);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn relative_destination_and_missing_directory() {
        assert!(StagedFile::create(Path::new("/nonexistent-wale-dir/x")).is_err());
        assert_eq!(parent_dir(Path::new("x")), Path::new("."));
    }
}

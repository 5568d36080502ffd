//! Tar members → a directory, safely, from several partitions at once.
//!
//! Safety rules, whatever the archive says:
//! * nothing is written outside the target: absolute names and `..` are refused, and no
//!   path is ever resolved through a symlink the archive created (only through links the
//!   operator or wale made on purpose, such as tablespace links, listed as *trusted*);
//! * files are always created anew (`O_CREAT|O_EXCL|O_NOFOLLOW` after removing what was
//!   there), so writing can never go through an existing symlink or hard link;
//! * hard-link targets must themselves be safe paths inside the target;
//! * devices and FIFOs are refused.
//!
//! Directory modes and times are applied after all partitions (a partition may create
//! files in a directory whose entry sits in another one); hard links whose target is not
//! there yet are made at the end too; `global/pg_control` is written last, so a restore
//! that fails part-way leaves a directory PostgreSQL refuses to start. Everything is then
//! flushed with `syncfs`.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::tar::{self, Header, Kind};

/// Why extraction failed; each variant names the member or path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tar stream itself is bad (or its source failed).
    #[error(transparent)]
    Tar(#[from] tar::Error),
    /// The member would write outside the target or through a link the archive made.
    #[error("refusing member {member:?}: {reason}")]
    Unsafe {
        /// The member name.
        member: String,
        /// Why.
        reason: String,
    },
    /// Another partition failed and this one stopped.
    #[error("stopped because another partition failed")]
    Cancelled,
    /// A local file-system operation failed.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// Choices for one extraction.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Apply owners from the archive (only meaningful as root).
    pub set_owner: bool,
    /// Keep a top-level `pg_wal`/`pg_xlog` symlink as stored instead of making a directory.
    pub keep_wal_link: bool,
    /// Relative paths of symlinks members may be written through (tablespace links).
    pub trusted_links: HashSet<PathBuf>,
    /// Relative paths no member may use (the caller's own files in the target).
    pub reserved: Vec<PathBuf>,
    /// Raised when the restore failed elsewhere or was interrupted: every stream stops
    /// at its next member.
    pub cancellation: crate::pool::Cancellation,
}

/// Counts of what was restored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated.
    pub directories: u64,
    /// Symbolic links created.
    pub symlinks: u64,
    /// Hard links created.
    pub hard_links: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// A top-level WAL directory symlink replaced by a real directory: (name, old target).
    pub replaced_wal_link: Option<(String, String)>,
}

struct DeferredDir {
    relative: PathBuf,
    mode: u32,
    mtime: (i64, u32),
    owner: Option<(u32, u32)>,
}

struct DeferredLink {
    relative: PathBuf,
    target: PathBuf,
    member: String,
}

#[derive(Default)]
struct State {
    /// Relative paths known to be real directories (or trusted links to them).
    verified_dirs: HashSet<PathBuf>,
    dirs: Vec<DeferredDir>,
    hard_links: Vec<DeferredLink>,
    pg_control: Option<(Header, Vec<u8>)>,
    summary: Summary,
    owners: HashMap<(String, String, u64, u64), (u32, u32)>,
}

/// Extracts tar streams into one target directory; shareable across threads.
pub struct Extractor {
    root: PathBuf,
    options: Options,
    state: Mutex<State>,
    /// File bytes written so far, for progress reports.
    pub bytes_written: AtomicU64,
}

/// Members are copied through a buffer of this size.
const COPY_BUFFER: usize = 256 * 1024;
/// Written last; see the module documentation.
const PG_CONTROL: &str = "global/pg_control";

impl Extractor {
    /// Prepares extraction into `root`, which must exist.
    pub fn new(root: &Path, options: Options) -> Result<Extractor, Error> {
        let root = fs::canonicalize(root).map_err(io_err(root, "cannot resolve the target"))?;
        let mut state = State::default();
        state.verified_dirs.insert(PathBuf::new());
        Ok(Extractor {
            root,
            options,
            state: Mutex::new(state),
            bytes_written: AtomicU64::new(0),
        })
    }

    /// The flag that stops this extraction (and the work around it).
    pub fn cancellation(&self) -> &crate::pool::Cancellation {
        &self.options.cancellation
    }

    /// Extracts every member of one tar stream.
    pub fn extract<R: Read>(&self, archive: &mut tar::Archive<R>) -> Result<u64, Error> {
        let mut buffer = vec![0u8; COPY_BUFFER];
        let mut members = 0;
        while let Some(header) = archive.next_header()? {
            if self.options.cancellation.is_cancelled() {
                return Err(Error::Cancelled);
            }
            self.extract_member(&header, archive, &mut buffer)?;
            members += 1;
        }
        Ok(members)
    }

    fn extract_member<R: Read>(
        &self,
        header: &Header,
        archive: &mut tar::Archive<R>,
        buffer: &mut [u8],
    ) -> Result<(), Error> {
        let member = header.display_path();
        let Some(relative) = member_path(&header.path).map_err(|reason| Error::Unsafe {
            member: member.clone(),
            reason: reason.to_string(),
        })?
        else {
            // The archive's root entry (`/`): metadata for the target itself.
            if header.kind == Kind::Directory {
                self.defer_dir(PathBuf::new(), header);
            }
            return Ok(());
        };
        self.check_allowed(&relative, header.kind, &member)?;
        match header.kind {
            Kind::Directory => self.make_dir(&relative, header, &member),
            Kind::File => self.write_file(&relative, header, &member, archive, buffer),
            Kind::Symlink => self.make_symlink(&relative, header, &member),
            Kind::HardLink => self.make_hard_link(&relative, header, &member),
            Kind::Special(kind) => Err(Error::Unsafe {
                member,
                reason: format!(
                    "device, FIFO or special file (type {:?}) is not restored",
                    kind as char
                ),
            }),
        }
    }

    /// Paths the archive may not touch: trusted links themselves (replacing one would
    /// redirect everything below it), links inside `pg_tblspc/` (WAL-E never archives
    /// them; a later run would trust them), and wale's own marker.
    fn check_allowed(&self, relative: &Path, kind: Kind, member: &str) -> Result<(), Error> {
        let refuse = |reason: &str| {
            Err(Error::Unsafe {
                member: member.to_string(),
                reason: reason.to_string(),
            })
        };
        if self.options.reserved.iter().any(|r| r == relative) {
            return refuse("the name is reserved for wale's own bookkeeping");
        }
        if self.options.trusted_links.contains(relative) {
            return match kind {
                // Metadata for a tablespace directory: the link's target is the operator's.
                Kind::Directory => Ok(()),
                _ => refuse("it would replace a tablespace link"),
            };
        }
        if kind == Kind::Symlink && relative.starts_with("pg_tblspc") {
            return refuse(
                "symlinks inside pg_tblspc/ are made by wale or the operator, not by archives",
            );
        }
        Ok(())
    }

    fn defer_dir(&self, relative: PathBuf, header: &Header) {
        let owner = self.owner_of(header);
        let mut state = self.state.lock().unwrap();
        state.summary.directories += 1;
        state.dirs.push(DeferredDir {
            relative,
            mode: header.mode,
            mtime: header.mtime,
            owner,
        });
    }

    fn make_dir(&self, relative: &Path, header: &Header, member: &str) -> Result<(), Error> {
        self.ensure_dir(relative, member)?;
        if !self.options.trusted_links.contains(relative) {
            self.defer_dir(relative.to_path_buf(), header);
        }
        Ok(())
    }

    fn write_file<R: Read>(
        &self,
        relative: &Path,
        header: &Header,
        member: &str,
        archive: &mut tar::Archive<R>,
        buffer: &mut [u8],
    ) -> Result<(), Error> {
        self.ensure_parent(relative, member)?;
        if relative == Path::new(PG_CONTROL) && header.size <= 64 * 1024 {
            let mut data = Vec::with_capacity(header.size as usize);
            loop {
                let n = archive.read_data(buffer)?;
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buffer[..n]);
            }
            self.state.lock().unwrap().pg_control = Some((header.clone(), data));
            return Ok(());
        }
        let path = self.root.join(relative);
        let mut file = self.create_file(&path)?;
        let mut written = 0u64;
        loop {
            let n = archive.read_data(buffer)?;
            if n == 0 {
                break;
            }
            file.write_all(&buffer[..n])
                .map_err(io_err(&path, "cannot write"))?;
            written += n as u64;
            self.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
        }
        self.finish_file(&file, &path, header)?;
        let mut state = self.state.lock().unwrap();
        state.summary.files += 1;
        state.summary.bytes += written;
        Ok(())
    }

    /// Creates `path` anew: whatever was there (file or link) is removed first, and the
    /// open refuses to follow a link planted in between.
    fn create_file(&self, path: &Path) -> Result<File, Error> {
        let open = || crate::durable::create_new_nofollow(path);
        match open() {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                remove_non_dir(path)?;
                open()
            }
            other => other,
        }
        .map_err(io_err(path, "cannot create"))
    }

    fn finish_file(&self, file: &File, path: &Path, header: &Header) -> Result<(), Error> {
        if let Some((uid, gid)) = self.owner_of(header) {
            std::os::unix::fs::fchown(file, Some(uid), Some(gid))
                .map_err(io_err(path, "cannot change owner"))?;
        }
        // Never restore set-user-ID or set-group-ID files (PostgreSQL has none).
        file.set_permissions(fs::Permissions::from_mode(header.mode & 0o1777))
            .map_err(io_err(path, "cannot set mode"))?;
        set_times_fd(file, header.mtime).map_err(io_err(path, "cannot set mtime"))
    }

    fn make_symlink(&self, relative: &Path, header: &Header, member: &str) -> Result<(), Error> {
        let target = header.link.clone().unwrap_or_default();
        if target.is_empty() {
            return Err(Error::Unsafe {
                member: member.to_string(),
                reason: "symlink without a target".into(),
            });
        }
        self.ensure_parent(relative, member)?;
        let is_wal_dir = relative == Path::new("pg_wal") || relative == Path::new("pg_xlog");
        if is_wal_dir && !self.options.keep_wal_link {
            // The source's WAL directory lived elsewhere (as on Heroku); its path means
            // nothing here. Restore a real, empty directory instead.
            self.ensure_dir(relative, member)?;
            let mut dir_header = header.clone();
            dir_header.mode = 0o700;
            self.defer_dir(relative.to_path_buf(), &dir_header);
            let old = String::from_utf8_lossy(&target).into_owned();
            self.state.lock().unwrap().summary.replaced_wal_link =
                Some((relative.display().to_string(), old));
            return Ok(());
        }
        let path = self.root.join(relative);
        remove_non_dir(&path)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
            .map_err(io_err(&path, "cannot create symlink"))?;
        if let Some((uid, gid)) = self.owner_of(header) {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                .map_err(io_err(&path, "cannot change owner"))?;
        }
        self.state.lock().unwrap().summary.symlinks += 1;
        Ok(())
    }

    /// Hard links are made at the end, once every partition is in place: the target may
    /// come in a later partition, or replace a stale file of an earlier run.
    fn make_hard_link(&self, relative: &Path, header: &Header, member: &str) -> Result<(), Error> {
        let unsafe_err = |reason: String| Error::Unsafe {
            member: member.to_string(),
            reason,
        };
        let raw_target = header.link.clone().unwrap_or_default();
        let target = member_path(&raw_target)
            .map_err(|r| unsafe_err(format!("hard-link target: {r}")))?
            .ok_or_else(|| unsafe_err("hard link to the archive root".into()))?;
        self.ensure_parent(relative, member)?;
        self.state.lock().unwrap().hard_links.push(DeferredLink {
            relative: relative.to_path_buf(),
            target,
            member: member.to_string(),
        });
        Ok(())
    }

    fn link_now(&self, link: &DeferredLink) -> Result<(), Error> {
        let path = self.root.join(&link.relative);
        remove_non_dir(&path)?;
        fs::hard_link(self.root.join(&link.target), &path)
            .map_err(io_err(&path, "cannot create hard link"))?;
        self.state.lock().unwrap().summary.hard_links += 1;
        Ok(())
    }

    /// Completes the extraction once every partition is in: pending hard links,
    /// directory modes, owners and times, then a flush of everything written. Call
    /// [`Extractor::write_pg_control`] after any further fix-ups, as the very last step.
    pub fn finish(&self) -> Result<Summary, Error> {
        let (links, mut dirs) = {
            let mut state = self.state.lock().unwrap();
            (
                std::mem::take(&mut state.hard_links),
                std::mem::take(&mut state.dirs),
            )
        };
        for link in &links {
            self.check_parents(&link.target, &link.member)?;
            match fs::symlink_metadata(self.root.join(&link.target)) {
                Ok(meta) if meta.is_file() => self.link_now(link)?,
                _ => {
                    return Err(Error::Unsafe {
                        member: link.member.clone(),
                        reason: format!(
                            "hard-link target {:?} is not a regular file of the backup",
                            link.target
                        ),
                    });
                }
            }
        }
        // Deepest first, so setting a parent's mtime is the last change inside it.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.relative.components().count()));
        for dir in &dirs {
            let path = self.root.join(&dir.relative);
            apply_dir_metadata(&path, dir)
                .map_err(io_err(&path, "cannot set mode, owner or mtime"))?;
        }
        self.sync_all()?;
        Ok(self.state.lock().unwrap().summary.clone())
    }

    /// Writes `global/pg_control` (held back until now) and makes it durable; returns its
    /// size, or `None` if the backup had none. Until this runs, PostgreSQL refuses to start
    /// on the target.
    pub fn write_pg_control(&self) -> Result<Option<u64>, Error> {
        let Some((header, data)) = self.state.lock().unwrap().pg_control.take() else {
            return Ok(None);
        };
        let path = self.root.join(PG_CONTROL);
        let mut file = self.create_file(&path)?;
        file.write_all(&data)
            .map_err(io_err(&path, "cannot write"))?;
        self.finish_file(&file, &path, &header)?;
        file.sync_all().map_err(io_err(&path, "cannot fsync"))?;
        let dir = self.root.join("global");
        crate::durable::sync_dir(&dir).map_err(io_err(&dir, "cannot fsync"))?;
        Ok(Some(data.len() as u64))
    }

    /// Flushes the file systems holding the target and every trusted link's target.
    fn sync_all(&self) -> Result<(), Error> {
        let mut places = vec![self.root.clone()];
        places.extend(self.options.trusted_links.iter().map(|l| self.root.join(l)));
        for place in places {
            crate::durable::sync_file_system(&place).map_err(io_err(&place, "cannot sync"))?;
        }
        Ok(())
    }

    /// Makes sure `relative` is a real directory (or a trusted link to one), creating it.
    fn ensure_dir(&self, relative: &Path, member: &str) -> Result<(), Error> {
        self.ensure_parent(relative, member)?;
        self.ensure_component(relative, member, true)
    }

    /// Makes sure every ancestor of `relative` is a safe directory, creating missing ones.
    fn ensure_parent(&self, relative: &Path, member: &str) -> Result<(), Error> {
        self.walk_parents(relative, member, true)
    }

    /// Checks (without creating) that every ancestor of `relative` is a safe directory.
    fn check_parents(&self, relative: &Path, member: &str) -> Result<(), Error> {
        self.walk_parents(relative, member, false)
    }

    fn walk_parents(&self, relative: &Path, member: &str, create: bool) -> Result<(), Error> {
        let mut prefix = PathBuf::new();
        let mut components = relative.components().peekable();
        while let Some(component) = components.next() {
            if components.peek().is_none() {
                break;
            }
            prefix.push(component);
            self.ensure_component(&prefix, member, create)?;
        }
        Ok(())
    }

    fn ensure_component(&self, prefix: &Path, member: &str, create: bool) -> Result<(), Error> {
        if self.state.lock().unwrap().verified_dirs.contains(prefix) {
            return Ok(());
        }
        let path = self.root.join(prefix);
        let unsafe_err = |reason: String| Error::Unsafe {
            member: member.to_string(),
            reason,
        };
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                // Like WAL-E (os.makedirs), directories the archive does not list get the
                // default mode; listed ones get theirs at the end.
                match fs::DirBuilder::new().mode(0o777).create(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(&path, "cannot create directory")(e)),
                }
                fs::symlink_metadata(&path).map_err(io_err(&path, "cannot inspect"))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(unsafe_err(format!("{} does not exist", prefix.display())));
            }
            Err(e) => return Err(io_err(&path, "cannot inspect")(e)),
        };
        let ok = if meta.file_type().is_symlink() {
            if !self.options.trusted_links.contains(prefix) {
                return Err(unsafe_err(format!(
                    "{} is a symlink; writing through it could leave the target directory",
                    prefix.display()
                )));
            }
            fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false)
        } else {
            meta.is_dir()
        };
        if !ok {
            return Err(unsafe_err(format!(
                "{} is not a directory",
                prefix.display()
            )));
        }
        self.state
            .lock()
            .unwrap()
            .verified_dirs
            .insert(prefix.to_path_buf());
        Ok(())
    }

    /// The owner to apply: names first (as GNU tar and Python do), then numeric ids.
    fn owner_of(&self, header: &Header) -> Option<(u32, u32)> {
        if !self.options.set_owner {
            return None;
        }
        let key = (
            header.uname.clone(),
            header.gname.clone(),
            header.uid,
            header.gid,
        );
        let mut state = self.state.lock().unwrap();
        if let Some(owner) = state.owners.get(&key) {
            return Some(*owner);
        }
        let uid = crate::users::uid_of(&header.uname).unwrap_or(header.uid as u32);
        let gid = crate::users::gid_of(&header.gname).unwrap_or(header.gid as u32);
        state.owners.insert(key, (uid, gid));
        Some((uid, gid))
    }
}

/// Why a member name is refused: it could write outside the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A NUL byte, which no file name holds.
    #[error("name contains a NUL byte")]
    Nul,
    /// An absolute path.
    #[error("absolute path")]
    Absolute,
    /// A `..` component.
    #[error("`..` in the path")]
    ParentDir,
}

/// Turns a member name into a safe relative path; `None` for the archive root (`/`, `.`).
pub fn member_path(name: &[u8]) -> Result<Option<PathBuf>, NameError> {
    let trimmed = {
        let mut end = name.len();
        while end > 1 && name[end - 1] == b'/' {
            end -= 1;
        }
        &name[..end]
    };
    if trimmed.is_empty() || trimmed == b"/" || trimmed == b"." {
        return Ok(None);
    }
    if trimmed.contains(&0) {
        return Err(NameError::Nul);
    }
    let path = Path::new(OsStr::from_bytes(trimmed));
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(NameError::Absolute);
            }
            Component::ParentDir => return Err(NameError::ParentDir),
        }
    }
    if clean.as_os_str().is_empty() {
        return Ok(None);
    }
    Ok(Some(clean))
}

/// Sets a directory's owner, mode and times through a descriptor opened without following
/// a symlink, so a link swapped in for a directory is never followed.
fn apply_dir_metadata(path: &Path, dir: &DeferredDir) -> io::Result<()> {
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)?;
    if let Some((uid, gid)) = dir.owner {
        std::os::unix::fs::fchown(&handle, Some(uid), Some(gid))?;
    }
    handle.set_permissions(fs::Permissions::from_mode(dir.mode))?;
    set_times_fd(&handle, dir.mtime)
}

/// Removes a file or symlink at `path` (never a directory); missing is fine.
fn remove_non_dir(path: &Path) -> Result<(), Error> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(Error::Io {
            path: path.to_path_buf(),
            action: "cannot replace a directory with a file or link",
            source: io::Error::from(io::ErrorKind::IsADirectory),
        }),
        Ok(_) => fs::remove_file(path).map_err(io_err(path, "cannot remove")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path, "cannot inspect")(e)),
    }
}

/// Sets a file's or directory's access and modification times to `mtime` (seconds and
/// nanoseconds since the epoch), as tar restores them.
fn set_times_fd(file: &File, (secs, nanos): (i64, u32)) -> io::Result<()> {
    let since_epoch = std::time::Duration::new(secs.max(0) as u64, nanos);
    let time = std::time::UNIX_EPOCH + since_epoch;
    file.set_times(fs::FileTimes::new().set_accessed(time).set_modified(time))
}

#[cfg(test)]
mod tests;

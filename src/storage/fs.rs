//! The `file://` backend: a key is the local path `/<key>`, as in WAL-E's `FileKey`.
//!
//! Listing imitates S3 with a delimiter (objects at one level plus "directories"), sorted by
//! key so that output does not depend on readdir order. Missing files are `NotFound`, and
//! only missing files: permissions and other I/O errors keep their own meaning.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use super::{Error, Listing, ObjectMeta, ObjectReader, Storage, unix_parts};
use crate::time::civil_utc;

/// One directory level's names, sorted: read once per walk.
pub(crate) type Names = Vec<String>;

/// Reads a WAL-E archive from the local file system.
pub struct FileStore;

impl FileStore {
    /// The local path of a key, refusing keys that would leave the tree (`..`).
    fn path_of(&self, key: &str) -> Result<PathBuf, Error> {
        let relative = Path::new(key);
        let escapes = relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
        if escapes || key.contains('\0') {
            return Err(Error::Permanent {
                url: self.url(key),
                detail: "refusing a key with `..` or an absolute component".into(),
            });
        }
        Ok(Path::new("/").join(relative))
    }

    fn io_error(&self, key: &str, err: io::Error) -> Error {
        let url = self.url(key);
        match err.kind() {
            io::ErrorKind::NotFound => Error::NotFound { url },
            io::ErrorKind::PermissionDenied => Error::AccessDenied {
                url,
                detail: err.to_string(),
            },
            io::ErrorKind::Interrupted | io::ErrorKind::TimedOut => Error::Transient {
                url,
                detail: err.to_string(),
            },
            _ => Error::Permanent {
                url,
                detail: err.to_string(),
            },
        }
    }

    fn meta_of(key: String, meta: &std::fs::Metadata) -> ObjectMeta {
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        ObjectMeta {
            key,
            size: meta.len(),
            last_modified_text: python_isoformat(modified),
            modified,
        }
    }

    fn open_blocking(&self, key: &str) -> Result<ObjectReader, Error> {
        let path = self.path_of(key)?;
        let file = std::fs::File::open(&path).map_err(|e| self.io_error(key, e))?;
        let meta = file.metadata().map_err(|e| self.io_error(key, e))?;
        if !meta.is_file() {
            return Err(Error::Permanent {
                url: self.url(key),
                detail: "not a regular file".into(),
            });
        }
        Ok(ObjectReader {
            url: self.url(key),
            size: Some(meta.len()),
            body: super::Body::File(file),
        })
    }

    fn list_blocking(&self, prefix: &str, delimiter: Option<&str>) -> Result<Listing, Error> {
        let (dir_key, name_start) = match prefix.rfind('/') {
            Some(i) => (&prefix[..=i], &prefix[i + 1..]),
            None => ("", prefix),
        };
        let dir = self.path_of(dir_key)?;
        let mut listing = Listing::default();
        match delimiter {
            Some("/") => self.list_level(&dir, dir_key, name_start, &mut listing)?,
            Some(other) => {
                return Err(Error::Permanent {
                    url: self.url(prefix),
                    detail: format!(
                        "the file backend only lists with delimiter `/`, not {other:?}"
                    ),
                });
            }
            None => self.list_tree(&dir, dir_key, name_start, &mut listing)?,
        }
        Ok(listing.sorted())
    }

    /// Files of one directory level after `start_after`, at most `limit`, in key order;
    /// the level's names come from `names`, read and sorted on the walk's first page.
    fn page_blocking(
        &self,
        names: &OnceLock<Names>,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, Error> {
        let (dir_key, name_start) = match prefix.rfind('/') {
            Some(i) => (&prefix[..=i], &prefix[i + 1..]),
            None => ("", prefix),
        };
        let names = match names.get() {
            Some(names) => names,
            None => {
                let read = self.sorted_names(&self.path_of(dir_key)?, dir_key, name_start)?;
                names.get_or_init(|| read)
            }
        };
        // Keys of one directory compare as their names do after the common `dir_key`; a
        // `start_after` outside the directory is before all of its keys or after all of them.
        let first = match start_after.strip_prefix(dir_key) {
            Some(name_after) => names.partition_point(|name| name.as_str() <= name_after),
            None if start_after < dir_key => 0,
            None => names.len(),
        };
        let mut objects = Vec::new();
        for name in &names[first..] {
            if objects.len() == limit {
                break;
            }
            let key = format!("{dir_key}{name}");
            match std::fs::metadata(Path::new("/").join(&key)) {
                Ok(meta) if meta.is_file() => objects.push(Self::meta_of(key, &meta)),
                Ok(_) => {}
                // Gone since the directory was read: not an object any more.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io_error(&key, e)),
            }
        }
        Ok(objects)
    }

    /// The entry names of `dir` that start with `name_start`, sorted; none when the
    /// directory does not exist (an S3 prefix with no keys).
    fn sorted_names(&self, dir: &Path, dir_key: &str, name_start: &str) -> Result<Names, Error> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io_error(dir_key, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.io_error(dir_key, e))?;
            if let Ok(name) = entry.file_name().into_string()
                && name.starts_with(name_start)
            {
                names.push(name);
            }
        }
        names.sort_unstable();
        Ok(names)
    }

    /// One page of a walk (see [`super::PageWalk`]), read on a blocking thread.
    pub(super) async fn page(
        &self,
        names: &Arc<OnceLock<Names>>,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, Error> {
        let names = names.clone();
        let (prefix, start_after) = (prefix.to_string(), start_after.to_string());
        tokio::task::spawn_blocking(move || {
            FileStore.page_blocking(&names, &prefix, &start_after, limit)
        })
        .await
        .map_err(|e| Error::Permanent {
            url: "file:///".into(),
            detail: format!("listing task failed: {e}"),
        })?
    }

    /// One directory level: files become objects, subdirectories common prefixes.
    fn list_level(
        &self,
        dir: &Path,
        dir_key: &str,
        name_start: &str,
        out: &mut Listing,
    ) -> Result<(), Error> {
        for (name, meta) in self.read_dir(dir, dir_key)? {
            if !name.starts_with(name_start) {
                continue;
            }
            let key = format!("{dir_key}{name}");
            if meta.is_dir() {
                out.common_prefixes.push(format!("{key}/"));
            } else if meta.is_file() {
                out.objects.push(Self::meta_of(key, &meta));
            }
        }
        Ok(())
    }

    /// Every file below `dir` whose first path component starts with `name_start`.
    fn list_tree(
        &self,
        dir: &Path,
        dir_key: &str,
        name_start: &str,
        out: &mut Listing,
    ) -> Result<(), Error> {
        for (name, meta) in self.read_dir(dir, dir_key)? {
            if !name.starts_with(name_start) {
                continue;
            }
            let key = format!("{dir_key}{name}");
            if meta.is_dir() {
                self.list_tree(&dir.join(&name), &format!("{key}/"), "", out)?;
            } else if meta.is_file() {
                out.objects.push(Self::meta_of(key, &meta));
            }
        }
        Ok(())
    }

    /// Entries of a directory with metadata (following symlinks); a missing directory is
    /// an empty listing, as an S3 prefix with no keys would be.
    fn read_dir(
        &self,
        dir: &Path,
        dir_key: &str,
    ) -> Result<Vec<(String, std::fs::Metadata)>, Error> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io_error(dir_key, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.io_error(dir_key, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            match std::fs::metadata(entry.path()) {
                Ok(meta) => out.push((name, meta)),
                // Vanished between readdir and stat, or a dangling link: not an object.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io_error(&format!("{dir_key}{name}"), e)),
            }
        }
        Ok(out)
    }
}

impl Storage for FileStore {
    async fn get(&self, key: &str) -> Result<ObjectReader, Error> {
        // Opening a local file is fast; doing it inline avoids a thread hop per call.
        self.open_blocking(key)
    }

    async fn get_range(&self, key: &str, offset: u64) -> Result<ObjectReader, Error> {
        use std::io::{Seek, SeekFrom};
        let mut object = self.open_blocking(key)?;
        if let super::Body::File(file) = &mut object.body {
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| self.io_error(key, e))?;
        }
        object.size = object.size.map(|s| s.saturating_sub(offset));
        Ok(object)
    }

    async fn list(&self, prefix: &str, delimiter: Option<&str>) -> Result<Listing, Error> {
        let (prefix, delimiter) = (prefix.to_string(), delimiter.map(str::to_string));
        tokio::task::spawn_blocking(move || FileStore.list_blocking(&prefix, delimiter.as_deref()))
            .await
            .map_err(|e| Error::Permanent {
                url: "file:///".into(),
                detail: format!("listing task failed: {e}"),
            })?
    }

    async fn list_after(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, Error> {
        self.page(&Arc::default(), prefix, start_after, limit).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, Error> {
        let path = self.path_of(key)?;
        let meta = std::fs::metadata(&path).map_err(|e| self.io_error(key, e))?;
        Ok(Self::meta_of(key.to_string(), &meta))
    }

    fn url(&self, key: &str) -> String {
        format!("file:///{key}")
    }
}

/// `datetime.utcfromtimestamp(st_mtime).isoformat()`, as WAL-E's file backend prints
/// modification times: microseconds, and no fraction at all when they are zero.
pub fn python_isoformat(t: SystemTime) -> String {
    let (mut secs, nanos) = unix_parts(t);
    let mut micros = (nanos + 500) / 1000;
    if micros == 1_000_000 {
        secs += 1;
        micros = 0;
    }
    let (y, mo, d, h, mi, s) = civil_utc(secs);
    let base = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
    if micros == 0 {
        base
    } else {
        format!("{base}.{micros:06}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn isoformat_matches_python() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_795_561_197, 987_648_000);
        assert_eq!(python_isoformat(t), "2026-11-24T22:59:57.987648");
        let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_561_197);
        assert_eq!(python_isoformat(whole), "2026-11-24T22:59:57");
    }

    #[test]
    fn keys_cannot_escape() {
        assert!(FileStore.path_of("a/../../etc/passwd").is_err());
        assert_eq!(
            FileStore.path_of("srv/x/wal_005/a.lzo").unwrap(),
            Path::new("/srv/x/wal_005/a.lzo")
        );
    }

    #[tokio::test]
    async fn listing_imitates_s3_delimiters() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir
            .path()
            .to_str()
            .unwrap()
            .trim_start_matches('/')
            .to_string();
        std::fs::create_dir_all(dir.path().join("bb/base_1/tar")).unwrap();
        std::fs::write(dir.path().join("bb/base_1_sentinel.json"), "{}").unwrap();
        std::fs::write(dir.path().join("bb/base_1/tar/part_0"), "x").unwrap();
        std::fs::write(dir.path().join("bb/other"), "y").unwrap();
        let level = FileStore
            .list(&format!("{root}/bb/"), Some("/"))
            .await
            .unwrap();
        let keys: Vec<_> = level.objects.iter().map(|o| o.key.clone()).collect();
        assert_eq!(
            keys,
            [
                format!("{root}/bb/base_1_sentinel.json"),
                format!("{root}/bb/other")
            ]
        );
        assert_eq!(level.common_prefixes, [format!("{root}/bb/base_1/")]);
        let tree = FileStore
            .list(&format!("{root}/bb/base"), None)
            .await
            .unwrap();
        assert_eq!(tree.objects.len(), 2);
        let none = FileStore
            .list(&format!("{root}/missing/"), Some("/"))
            .await
            .unwrap();
        assert!(none.objects.is_empty());
        let err = FileStore
            .get(&format!("{root}/bb/nope"))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, Error::NotFound { .. }));
    }
}

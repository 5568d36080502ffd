//! Tablespaces of a base backup: where each one's files go on restore, and the
//! `tablespace_map` fix-up that keeps PostgreSQL from re-pointing them at the source
//! machine's paths (WAL-E #354).
//!
//! Per tablespace OID, in order of precedence:
//! * `--tablespace OID=PATH`: `PATH` is created if needed and `pg_tblspc/OID` links to it;
//! * `--restore-spec FILE|SOURCE`: the spec's `loc` is created and linked, as WAL-E does,
//!   but always under `PG_CLUSTER_DIRECTORY` (WAL-E used the spec's `base_prefix`, #291);
//! * `--blind-restore`: the files go into a real directory `pg_tblspc/OID`;
//! * otherwise `pg_tblspc/OID` must already be a symlink to a directory (WAL-E's check).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::Error;

/// One tablespace named by the backup's sentinel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    /// The OID, as a string of digits.
    pub oid: String,
    /// Where it lived on the source machine (the spec's `loc`).
    pub location: String,
}

impl Tablespace {
    /// `pg_tblspc/<oid>`, relative to the data directory.
    pub fn link(&self) -> PathBuf {
        Path::new("pg_tblspc").join(&self.oid)
    }
}

/// The restore choices for tablespaces, from the command line.
#[derive(Debug, Clone, Default)]
pub struct Choices {
    /// `--blind-restore`.
    pub blind: bool,
    /// `--restore-spec`: `SOURCE` or a JSON file, already loaded.
    pub restore_spec: Option<Value>,
    /// `--tablespace OID=PATH`.
    pub mappings: Vec<(String, PathBuf)>,
}

/// Why a sentinel's tablespace spec cannot be followed: restoring by it could put files
/// anywhere.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `tablespaces` is not a list.
    #[error("spec.tablespaces is not a list")]
    NotAList,
    /// An entry that is not an OID (digits only).
    #[error("spec.tablespaces holds {0}, not an OID")]
    NotAnOid(String),
    /// A tablespace without its location.
    #[error("spec has no loc for tablespace {0}")]
    NoLocation(String),
}

/// Reads the tablespaces from a sentinel `spec` (absent or empty: none).
pub fn from_spec(spec: Option<&Value>) -> Result<Vec<Tablespace>, SpecError> {
    let Some(spec) = spec else {
        return Ok(Vec::new());
    };
    let oids = match spec.get("tablespaces") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(oids)) => oids,
        Some(_) => return Err(SpecError::NotAList),
    };
    let mut out = Vec::new();
    for oid in oids {
        let oid = oid
            .as_str()
            .filter(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| SpecError::NotAnOid(oid.to_string()))?;
        let location = spec
            .get(oid)
            .and_then(|entry| entry.get("loc"))
            .and_then(Value::as_str)
            .ok_or_else(|| SpecError::NoLocation(oid.to_string()))?;
        out.push(Tablespace {
            oid: oid.to_string(),
            location: location.to_string(),
        });
    }
    Ok(out)
}

/// `--restore-spec FILE|SOURCE`: `SOURCE` is the sentinel's spec; a file is merged over it
/// key by key, as WAL-E does.
pub fn load_restore_spec(arg: &str, sentinel_spec: Option<&Value>) -> Result<Value, Error> {
    let mut merged = sentinel_spec
        .cloned()
        .unwrap_or_else(|| Value::Object(Default::default()));
    if arg == "SOURCE" {
        return Ok(merged);
    }
    let text =
        std::fs::read(arg).map_err(|e| Error::local(arg, "cannot read the restore spec", e))?;
    let file: Value = serde_json::from_slice(&text)
        .map_err(|e| Error::Usage(format!("{arg}: the restore spec is not valid JSON: {e}")))?;
    let (Value::Object(into), Value::Object(from)) = (&mut merged, file) else {
        return Err(Error::Usage(format!(
            "{arg}: the restore spec must be a JSON object"
        )));
    };
    for (key, value) in from {
        into.insert(key, value);
    }
    Ok(merged)
}

/// Parses `OID=PATH`.
pub fn parse_mapping(arg: &str) -> Result<(String, PathBuf), Error> {
    match arg.split_once('=') {
        Some((oid, path))
            if !oid.is_empty() && oid.bytes().all(|b| b.is_ascii_digit()) && !path.is_empty() =>
        {
            Ok((oid.to_string(), PathBuf::from(path)))
        }
        _ => Err(Error::Usage(format!(
            "--tablespace {arg:?}: expected OID=PATH, e.g. 16386=/srv/ts1"
        ))),
    }
}

/// Prepares `pg_tblspc/` in the target for the backup's tablespaces and returns the links
/// the extraction may write through. Nothing here writes outside the target except the
/// directories the operator named (mapping paths, restore-spec locations).
pub fn prepare(
    target: &Path,
    tablespaces: &[Tablespace],
    choices: &Choices,
) -> Result<HashSet<PathBuf>, Error> {
    let mut trusted = HashSet::new();
    let mut missing = Vec::new();
    let spec_locations = |oid: &str| -> Option<PathBuf> {
        let loc = choices
            .restore_spec
            .as_ref()?
            .get(oid)?
            .get("loc")?
            .as_str()?;
        Some(PathBuf::from(loc))
    };
    for (oid, path) in &choices.mappings {
        if !tablespaces.iter().any(|t| &t.oid == oid) {
            let known: Vec<&str> = tablespaces.iter().map(|t| t.oid.as_str()).collect();
            return Err(Error::Usage(format!(
                "--tablespace {oid}={}: the backup has no tablespace {oid} ({})",
                path.display(),
                if known.is_empty() {
                    "it has no tablespaces".to_string()
                } else {
                    format!("its tablespaces: {}", known.join(", "))
                }
            )));
        }
    }
    for tablespace in tablespaces {
        let link = tablespace.link();
        let mapped = choices
            .mappings
            .iter()
            .find(|(oid, _)| oid == &tablespace.oid)
            .map(|(_, p)| p.clone());
        if let Some(location) = mapped.clone() {
            make_link(target, &link, &location, true)?;
            trusted.insert(link);
        } else if let Some(location) = spec_locations(&tablespace.oid) {
            make_link(target, &link, &location, false)?;
            trusted.insert(link);
        } else if choices.blind {
            continue;
        } else if std::fs::metadata(target.join(&link))
            .map(|m| m.is_dir())
            .unwrap_or(false)
            && std::fs::symlink_metadata(target.join(&link))
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false)
        {
            trusted.insert(link);
        } else {
            missing.push(tablespace.oid.clone());
        }
    }
    if !missing.is_empty() {
        return Err(Error::Usage(format!(
            "symlinks for tablespaces {} not found in {}/pg_tblspc: create them, or pass --tablespace OID=PATH, --restore-spec SOURCE or --blind-restore",
            missing.join(", "),
            target.display()
        )));
    }
    Ok(trusted)
}

/// Creates `location` (mode 0700) if needed and links `target/link` to it. Locations from
/// a spec are created without their parents, as WAL-E does; `--tablespace` paths with them.
fn make_link(target: &Path, link: &Path, location: &Path, with_parents: bool) -> Result<(), Error> {
    let sane = location.is_absolute()
        && location.parent().is_some()
        && !location
            .components()
            .any(|c| c == std::path::Component::ParentDir);
    if !sane {
        return Err(Error::Usage(format!(
            "tablespace location {:?} must be an absolute path below / without `..`",
            location.display().to_string()
        )));
    }
    use std::os::unix::fs::DirBuilderExt;
    if with_parents && let Some(parent) = location.parent() {
        // Directories on the way stay passable for the server's user; only the location
        // itself is private.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| Error::local(parent, "cannot create the tablespace's parent", e))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(location) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !with_parents => {
            return Err(Error::local(
                location,
                "cannot create the tablespace directory (a restore spec's locations are created without their parents, as WAL-E does: create the parent, or use --tablespace OID=PATH)",
                e,
            ));
        }
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(Error::local(
                location,
                "cannot create the tablespace directory",
                e,
            ));
        }
        _ => {}
    }
    let link_path = target.join(link);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(target.join("pg_tblspc"))
        .map_err(|e| Error::local(target.join("pg_tblspc"), "cannot create", e))?;
    match std::fs::read_link(&link_path) {
        Ok(existing) if existing == location => return Ok(()),
        Ok(existing) => {
            return Err(Error::Usage(format!(
                "{} already links to {}, not {}",
                link_path.display(),
                existing.display(),
                location.display()
            )));
        }
        Err(_) if link_path.symlink_metadata().is_ok() => {
            return Err(Error::Usage(format!(
                "{} already exists and is not a symlink",
                link_path.display()
            )));
        }
        Err(_) => {}
    }
    std::os::unix::fs::symlink(location, &link_path)
        .map_err(|e| Error::local(&link_path, "cannot create the tablespace link", e))?;
    tracing::info!(
        "tablespace {}: {} -> {}",
        link.display(),
        link_path.display(),
        location.display()
    );
    Ok(())
}

/// Makes a restored `tablespace_map` agree with the restore: each line points at where
/// `pg_tblspc/<oid>` really leads now; lines for tablespaces restored into real
/// directories are dropped (PostgreSQL would otherwise try to replace those directories
/// with links to the source machine's paths and fail). Returns what was changed.
pub fn fix_tablespace_map(target: &Path) -> Result<Option<String>, Error> {
    let path = target.join("tablespace_map");
    let Some(text) = crate::durable::read_small_file(&path)
        .map_err(|e| Error::local(&path, "cannot read", e))?
    else {
        return Ok(None);
    };
    let mut kept = String::new();
    let mut changes = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (oid, old) = line.split_once(' ').unwrap_or((line, ""));
        if oid.is_empty() || !oid.bytes().all(|b| b.is_ascii_digit()) {
            changes.push(format!("{line:?}: dropped (not a tablespace entry)"));
            continue;
        }
        match std::fs::read_link(target.join("pg_tblspc").join(oid)) {
            Ok(now) => {
                let now = now.to_string_lossy();
                if now.contains('\n') {
                    return Err(Error::Usage(format!(
                        "pg_tblspc/{oid} links to a path with a line break"
                    )));
                }
                if now != old {
                    changes.push(format!("{oid}: {old} -> {now}"));
                }
                kept.push_str(&format!("{oid} {now}\n"));
            }
            Err(_) => changes.push(format!("{oid}: dropped (restored into pg_tblspc/{oid})")),
        }
    }
    if changes.is_empty() {
        return Ok(None);
    }
    let result = if kept.is_empty() {
        std::fs::remove_file(&path)
    } else {
        // Keep the restored file's mode and owner (the archive's, applied as root).
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::symlink_metadata(&path);
        let mode = meta
            .as_ref()
            .map_or(0o600, |m| m.permissions().mode() & 0o7777);
        let owner = meta.ok().map(|m| (m.uid(), m.gid()));
        crate::durable::write_file(&path, kept.as_bytes(), mode, owner)
    };
    result.map_err(|e| Error::local(&path, "cannot rewrite", e))?;
    Ok(Some(changes.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spec_parsing() {
        let spec = json!({"base_prefix": "/x/", "tablespaces": ["16386"], "16386": {"loc": "/ts/", "link": "pg_tblspc/16386"}});
        let t = from_spec(Some(&spec)).unwrap();
        assert_eq!(
            t,
            [Tablespace {
                oid: "16386".into(),
                location: "/ts/".into()
            }]
        );
        assert!(
            from_spec(Some(&json!({"tablespaces": []})))
                .unwrap()
                .is_empty()
        );
        assert!(from_spec(None).unwrap().is_empty());
        assert!(from_spec(Some(&json!({"tablespaces": ["../x"]}))).is_err());
        assert!(from_spec(Some(&json!({"tablespaces": ["1"]}))).is_err());
    }

    #[test]
    fn restore_spec_merges_over_the_sentinel() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spec.json");
        std::fs::write(&file, r#"{"16386": {"loc": "/new/"}}"#).unwrap();
        let sentinel =
            json!({"base_prefix": "/x/", "tablespaces": ["16386"], "16386": {"loc": "/old/"}});
        let merged = load_restore_spec(file.to_str().unwrap(), Some(&sentinel)).unwrap();
        assert_eq!(merged["16386"]["loc"], "/new/");
        assert_eq!(merged["tablespaces"], json!(["16386"]));
        assert_eq!(
            load_restore_spec("SOURCE", Some(&sentinel)).unwrap(),
            sentinel
        );
    }

    #[test]
    fn placement_errors_name_the_path_and_what_would_work() {
        use std::os::unix::fs::PermissionsExt;
        let target = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let ts = [Tablespace {
            oid: "16386".into(),
            location: "/gone/".into(),
        }];
        let unknown = Choices {
            mappings: vec![("99".into(), PathBuf::from("/x"))],
            ..Default::default()
        };
        let err = prepare(target.path(), &ts, &unknown)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--tablespace 99=/x") && err.contains("its tablespaces: 16386"),
            "{err}"
        );

        let deep = elsewhere.path().join("a/b/ts");
        let spec = Choices {
            restore_spec: Some(json!({"16386": {"loc": deep.to_str().unwrap()}})),
            ..Default::default()
        };
        let err = prepare(target.path(), &ts, &spec).unwrap_err().to_string();
        assert!(
            err.contains(deep.to_str().unwrap()) && err.contains("create the parent"),
            "{err}"
        );

        // --tablespace creates the parents, passable by the server's user.
        let mapped = Choices {
            mappings: vec![("16386".into(), deep.clone())],
            ..Default::default()
        };
        prepare(target.path(), &ts, &mapped).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&elsewhere.path().join("a/b")), 0o755);
        assert_eq!(mode(&deep), 0o700);
    }

    #[test]
    fn mappings_parse() {
        assert_eq!(
            parse_mapping("16386=/srv/ts").unwrap(),
            ("16386".into(), PathBuf::from("/srv/ts"))
        );
        for bad in ["x=/a", "16386", "=/a", "1="] {
            assert!(parse_mapping(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_requires_links_blind_does_not_and_mappings_create_them() {
        let target = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let ts = [Tablespace {
            oid: "16386".into(),
            location: "/gone/".into(),
        }];
        let err = prepare(target.path(), &ts, &Choices::default()).unwrap_err();
        assert!(err.to_string().contains("16386"), "{err}");
        let blind = Choices {
            blind: true,
            ..Default::default()
        };
        assert!(prepare(target.path(), &ts, &blind).unwrap().is_empty());
        let loc = elsewhere.path().join("ts1");
        let mapped = Choices {
            mappings: vec![("16386".into(), loc.clone())],
            ..Default::default()
        };
        let trusted = prepare(target.path(), &ts, &mapped).unwrap();
        assert!(trusted.contains(Path::new("pg_tblspc/16386")));
        assert_eq!(
            std::fs::read_link(target.path().join("pg_tblspc/16386")).unwrap(),
            loc
        );
        // The link now exists, so the default check passes too.
        assert_eq!(
            prepare(target.path(), &ts, &Choices::default())
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn tablespace_map_follows_the_links() {
        let target = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(target.path().join("pg_tblspc/2")).unwrap();
        std::os::unix::fs::symlink("/srv/new", target.path().join("pg_tblspc/1")).unwrap();
        std::fs::write(
            target.path().join("tablespace_map"),
            "1 /srv/old\n2 /srv/two\n",
        )
        .unwrap();
        let change = fix_tablespace_map(target.path()).unwrap().unwrap();
        assert!(
            change.contains("/srv/old -> /srv/new") && change.contains("2: dropped"),
            "{change}"
        );
        assert_eq!(
            std::fs::read_to_string(target.path().join("tablespace_map")).unwrap(),
            "1 /srv/new\n"
        );
        assert_eq!(fix_tablespace_map(target.path()).unwrap(), None);
    }
}

//! GPG-encrypted archives (WAL-E's `WALE_GPG_KEY_ID`) against plain ones and against the
//! tools, in the same run: the benchmark archive's typical WAL segment and its latest base
//! backup are encrypted here exactly as WAL-E encrypts (`gpg -e -z 0 -r KEY` over the lzop
//! object, a throwaway RSA-2048 key), then
//! * `wal-fetch` of the segment, cold process, `file://`: wale decrypting in process, wale
//!   through `gpg`, wale on the plain object, `gpg -d | lzop -d > file; sync`, and real
//!   WAL-E 1.1.1 on the encrypted object;
//! * `backup-fetch` of the backup: wale in process against wale on the plain backup and
//!   against `gpg -d | lzop -d | tar -x` of each partition in turn; the three interleaved,
//!   run after run.
//!
//! Run by `scripts/bench.sh`, or `cargo bench --bench gpg` (see `support`).

#[path = "support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{
    Comparison, Samples, Suite, common, latest_backup, partitions_of, restored_bytes, run,
    sync_all, wal_e, wal_e_bin,
};

const WAL_SECTION: &str = "wal-fetch of an encrypted segment, cold process";
const BACKUP_SECTION: &str = "backup-fetch of an encrypted backup";
const IN_PROCESS: &str = "wale, encrypted, in process";
const THROUGH_GPG: &str = "wale, encrypted, through gpg";
const PLAIN: &str = "wale, the plain object";
const GPG_LZOP: &str = "gpg -d | lzop -d > file; sync";
const GPG_LZOP_TAR: &str = "gpg -d | lzop -d | tar -x, in turn";
const WAL_E: &str = "WAL-E 1.1.1, encrypted";

/// A throwaway key in a private GNUPGHOME and its armored export.
struct Key {
    home: tempfile::TempDir,
    fingerprint: String,
    armored: PathBuf,
}

impl Key {
    fn generate(scratch: &Path) -> Key {
        let home = tempfile::Builder::new()
            .prefix("g")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let gpg = |args: &[&str]| {
            let out = Command::new("gpg")
                .env("GNUPGHOME", home.path())
                .args(["--batch", "--quiet", "--pinentry-mode", "loopback"])
                .args(["--passphrase", ""])
                .args(args)
                .output()
                .expect("gpg");
            assert!(out.status.success(), "gpg {args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        let uid = "wale bench <bench@example.invalid>";
        gpg(&["--quick-generate-key", uid, "rsa2048", "cert,sign", "never"]);
        let colons = gpg(&["--with-colons", "--list-keys", uid]);
        let fingerprint = colons
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|rest| rest.split(':').nth(8))
            .expect("a fingerprint")
            .to_string();
        gpg(&["--quick-add-key", &fingerprint, "rsa2048", "encr", "never"]);
        let armored = scratch.join("secret-key.asc");
        let key = gpg(&["--armor", "--export-secret-keys", &fingerprint]);
        std::fs::write(&armored, key).unwrap();
        Key {
            home,
            fingerprint,
            armored,
        }
    }

    /// What WAL-E's upload does to an lzop object.
    fn encrypt(&self, plain: &Path, encrypted: &Path) {
        std::fs::create_dir_all(encrypted.parent().unwrap()).unwrap();
        let status = Command::new("gpg")
            .env("GNUPGHOME", self.home.path())
            .args([
                "--batch",
                "--quiet",
                "--trust-model",
                "always",
                "-e",
                "-z",
                "0",
            ])
            .args(["-r", &self.fingerprint, "-o"])
            .arg(encrypted)
            .arg(plain)
            .status()
            .unwrap();
        assert!(status.success(), "gpg -e {}", plain.display());
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

fn main() {
    let mut suite = Suite::from_env("gpg");
    let scratch = tempfile::Builder::new()
        .prefix("wale-bench-gpg-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let key = Key::generate(scratch.path());
    let plain = suite.archive.clone();
    let encrypted = scratch.path().join("archive");

    // The median-sized segment, as the wal_fetch bench takes it.
    let mut sized: Vec<(u64, String)> = support::wal_segments(&plain)
        .into_iter()
        .map(|n| (wal_object(&plain, &n).metadata().unwrap().len(), n))
        .collect();
    sized.sort();
    let (object_bytes, segment) = sized[sized.len() / 2].clone();
    key.encrypt(
        &wal_object(&plain, &segment),
        &wal_object(&encrypted, &segment),
    );
    let backup = latest_backup(&plain);
    let backup_dir = Path::new("basebackups_005").join(&backup);
    let mut partitions = Vec::new();
    for from in partitions_of(&plain, &backup) {
        let to = encrypted
            .join(&backup_dir)
            .join("tar_partitions")
            .join(from.file_name().unwrap());
        key.encrypt(&from, &to);
        partitions.push(to);
    }
    std::fs::copy(
        plain.join(&backup_dir).join("extended_version.txt"),
        encrypted.join(&backup_dir).join("extended_version.txt"),
    )
    .unwrap();
    let sentinel = format!("basebackups_005/{backup}_backup_stop_sentinel.json");
    std::fs::copy(plain.join(&sentinel), encrypted.join(&sentinel)).unwrap();

    let env = Env {
        plain: format!("file://{}", plain.display()),
        encrypted: format!("file://{}", encrypted.display()),
        key: &key,
    };
    wal_fetch(&mut suite, &env, &segment, object_bytes, scratch.path());
    backup_fetch(&mut suite, &env, &partitions, scratch.path());
    suite.save();
}

/// The prefixes and the key the commands use.
struct Env<'a> {
    plain: String,
    encrypted: String,
    key: &'a Key,
}

impl Env<'_> {
    fn wale(&self, tool: &str) -> Command {
        let mut cmd = common::wale();
        match tool {
            PLAIN => {
                cmd.env("WALE_FILE_PREFIX", &self.plain);
            }
            IN_PROCESS => {
                cmd.env("WALE_FILE_PREFIX", &self.encrypted)
                    .env("WALE_PGP_KEY_PATH", &self.key.armored);
            }
            THROUGH_GPG => {
                cmd.env("WALE_FILE_PREFIX", &self.encrypted)
                    .env("WALE_GPG_KEY_ID", &self.key.fingerprint)
                    .env("GNUPGHOME", self.key.home.path());
            }
            _ => unreachable!("{tool}"),
        }
        cmd.arg("--terse");
        cmd
    }
}

fn wal_fetch(suite: &mut Suite, env: &Env<'_>, segment: &str, object_bytes: u64, scratch: &Path) {
    let dest = scratch.join("RECOVERYXLOG");
    let case = format!(
        "typical segment ({} KB object), file://",
        object_bytes / 1000
    );
    let runs = suite.runs(15, 5);
    let times = |command: &dyn Fn() -> Command| Samples::collect(runs, 2, || run(command()));
    let bytes = Some(16 << 20);
    for tool in [PLAIN, IN_PROCESS, THROUGH_GPG] {
        let samples = times(&|| {
            let mut cmd = env.wale(tool);
            cmd.args(["wal-fetch", "--prefetch", "0", segment])
                .arg(&dest);
            cmd
        });
        suite.record((WAL_SECTION, &case, tool), &samples, bytes, "--prefetch 0");
    }
    let encrypted_object = format!(
        "{}/wal_005/{segment}.lzo",
        env.encrypted.trim_start_matches("file://")
    );
    let pipeline = format!(
        "gpg -d -q --batch '{encrypted_object}' | lzop -d -c > '{}'; sync -d '{}'",
        dest.display(),
        dest.display()
    );
    let samples = times(&|| {
        let mut cmd = Command::new("sh");
        cmd.env("GNUPGHOME", env.key.home.path())
            .arg("-c")
            .arg(&pipeline);
        cmd
    });
    suite.record(
        (WAL_SECTION, &case, GPG_LZOP),
        &samples,
        bytes,
        "local object",
    );
    if let Some(bin) = wal_e_bin() {
        let samples = times(&|| {
            let mut cmd = wal_e(&bin);
            cmd.env("WALE_FILE_PREFIX", &env.encrypted)
                .env("WALE_GPG_KEY_ID", &env.key.fingerprint)
                .env("GNUPGHOME", env.key.home.path())
                .args(["--terse", "wal-fetch", "--prefetch", "0", segment])
                .arg(&dest);
            cmd
        });
        suite.record((WAL_SECTION, &case, WAL_E), &samples, bytes, "--prefetch 0");
        suite.compare(Comparison {
            label: "encrypted wal-fetch, in process, vs WAL-E",
            section: WAL_SECTION,
            case: &case,
            subject: IN_PROCESS,
            baseline: WAL_E,
            max_ratio: Some(0.1),
            target: "≥ 10× faster than WAL-E",
        });
    }
    suite.compare(Comparison {
        label: "encrypted wal-fetch, in process, vs the plain segment",
        section: WAL_SECTION,
        case: &case,
        subject: IN_PROCESS,
        baseline: PLAIN,
        max_ratio: Some(1.5),
        target: "≤ 1.5× the plain segment",
    });
    suite.compare(Comparison {
        label: "encrypted wal-fetch, in process, vs gpg -d | lzop -d + sync",
        section: WAL_SECTION,
        case: &case,
        subject: IN_PROCESS,
        baseline: GPG_LZOP,
        max_ratio: Some(1.0),
        target: "no slower than gpg | lzop",
    });
}

/// A command that restores into the directory it is given.
type CommandFor<'a> = dyn Fn(&Path) -> Command + 'a;

fn backup_fetch(suite: &mut Suite, env: &Env<'_>, partitions: &[PathBuf], scratch: &Path) {
    let bytes = restored_bytes(&suite.archive, &latest_backup(&suite.archive));
    let case = format!(
        "{} partitions, {:.2} GB restored, file://",
        partitions.len(),
        bytes as f64 / 1e9
    );
    let wale = |tool: &'static str| {
        move |target: &Path| {
            let mut cmd = env.wale(tool);
            cmd.arg("backup-fetch")
                .arg(target)
                .args(["LATEST", "--blind-restore"]);
            cmd
        }
    };
    let pipeline = |target: &Path| {
        let mut script = format!("set -e; mkdir -p '{}'", target.display());
        for partition in partitions {
            script.push_str(&format!(
                "; gpg -d -q --batch '{}' | lzop -d -c | tar -x -C '{}'",
                partition.display(),
                target.display()
            ));
        }
        script.push_str(&format!("; sync -f '{}'", target.display()));
        let mut cmd = Command::new("sh");
        cmd.env("GNUPGHOME", env.key.home.path())
            .arg("-c")
            .arg(script);
        cmd
    };
    let (plain, in_process) = (wale(PLAIN), wale(IN_PROCESS));
    let tools: [(&str, &CommandFor); 3] = [
        (PLAIN, &plain),
        (IN_PROCESS, &in_process),
        (GPG_LZOP_TAR, &pipeline),
    ];
    // The three in turn, run after run, so that a slow stretch of the disk falls on all
    // of them alike; each restore removed and flushed before the next.
    let mut samples: Vec<Samples> = tools.iter().map(|_| Samples::default()).collect();
    sync_all();
    for _ in 0..suite.runs(3, 2) {
        for ((_, command), samples) in tools.iter().zip(&mut samples) {
            let dir = tempfile::tempdir_in(scratch).unwrap();
            samples.push(run(command(&dir.path().join("pgdata"))));
            drop(dir);
            sync_all();
        }
    }
    for ((tool, _), samples) in tools.iter().zip(&samples) {
        suite.record((BACKUP_SECTION, &case, tool), samples, Some(bytes), "");
    }
    for (baseline, label, max_ratio, target) in [
        (
            PLAIN,
            "encrypted backup-fetch vs the plain backup",
            Some(1.5),
            "≤ 1.5× the plain backup",
        ),
        (
            GPG_LZOP_TAR,
            "encrypted backup-fetch vs gpg | lzop | tar",
            Some(1.0),
            "no slower than gpg | lzop | tar",
        ),
    ] {
        suite.compare(Comparison {
            label,
            section: BACKUP_SECTION,
            case: &case,
            subject: IN_PROCESS,
            baseline,
            max_ratio,
            target,
        });
    }
}

fn wal_object(archive: &Path, name: &str) -> PathBuf {
    archive.join("wal_005").join(format!("{name}.lzo"))
}

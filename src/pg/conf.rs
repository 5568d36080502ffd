//! PostgreSQL configuration files: reading `postgresql.auto.conf` as PostgreSQL does,
//! neutralising what a vendor left in it, and writing the files a restored server needs.
//!
//! WAL-E never archives `postgresql.conf`, `pg_hba.conf` or `pg_ident.conf`, but it keeps
//! `postgresql.auto.conf`, which PostgreSQL reads *after* `postgresql.conf`: a vendor
//! setting there (a preload library that is not installed here, a path on the vendor's
//! machine, an `archive_command` that would write into the archive) wins over anything
//! written in `postgresql.conf`, so it has to be commented out where it stands.

use std::fmt::Write as _;

/// One `name = value` line of a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The name, lower-cased as PostgreSQL compares names.
    pub name: String,
    /// The value with quotes removed and `''` / backslash escapes undone.
    pub value: String,
}

/// Parses one configuration line as PostgreSQL's lexer would for the common forms:
/// `name = value`, `name value`, `name = 'quoted # value'`, trailing `# comment`.
/// Returns `None` for blank lines, comments and lines it cannot read.
pub fn parse_line(line: &str) -> Option<Setting> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = line[name_end..].trim_start();
    if let Some(after) = rest.strip_prefix('=') {
        rest = after.trim_start();
    }
    let value = if let Some(quoted) = rest.strip_prefix('\'') {
        let mut value = String::new();
        let mut chars = quoted.chars().peekable();
        loop {
            match chars.next()? {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    value.push('\'');
                }
                '\'' => break,
                '\\' => value.push(chars.next()?),
                c => value.push(c),
            }
        }
        value
    } else {
        rest.split(|c: char| c == '#' || c.is_whitespace())
            .next()
            .unwrap_or("")
            .to_string()
    };
    Some(Setting {
        name: name.to_ascii_lowercase(),
        value,
    })
}

/// A value quoted for a configuration file.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// A value quoted for a libpq connection string (`primary_conninfo`): single quotes,
/// with backslash escapes for quotes and backslashes.
pub fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A word quoted for `sh -c` (PostgreSQL runs `restore_command` through the shell).
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Settings whose value is a path: on a restored machine an absolute one names the
/// source machine's file system.
const PATH_SETTINGS: &[&str] = &[
    "data_directory",
    "config_file",
    "hba_file",
    "ident_file",
    "external_pid_file",
    "include",
    "include_dir",
    "include_if_exists",
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_ca_file",
    "ssl_crl_file",
    "ssl_crl_dir",
    "ssl_dh_params_file",
    "ssl_passphrase_command",
    "unix_socket_directories",
    "log_directory",
    "stats_temp_directory",
    "krb_server_keyfile",
    "dynamic_library_path",
    "promote_trigger_file",
];

/// Preload settings: a library the server cannot load stops it at start-up
/// (`shared_`) or at every connection (`session_`, `local_`).
const PRELOAD_SETTINGS: &[&str] = &[
    "shared_preload_libraries",
    "session_preload_libraries",
    "local_preload_libraries",
];

/// What the sanitiser decided about one line of `postgresql.auto.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The line was commented out, for this reason.
    Disabled {
        /// The setting's name.
        name: String,
        /// Why (also written into the file after `# wale:`).
        reason: String,
    },
    /// A preload list was cut down to the libraries that load here.
    LibrariesDropped {
        /// The setting's name.
        name: String,
        /// The libraries left out.
        dropped: Vec<String>,
    },
    /// A vendor's custom (dotted) setting: harmless, kept.
    VendorPlaceholder {
        /// The setting's name.
        name: String,
    },
}

/// The sanitised `postgresql.auto.conf` and what was done to it.
#[derive(Debug, Clone, Default)]
pub struct Sanitised {
    /// The new file's text.
    pub text: String,
    /// One entry per setting acted on or worth naming.
    pub findings: Vec<Finding>,
}

/// Comments out, each with a `# wale:` reason, the settings of a restored
/// `postgresql.auto.conf` that would stop the server, point at the source machine, write
/// into the archive, or override what wale writes in `postgresql.conf` (`owned`, the
/// names wale sets there). `library_loads` says whether a preload library can be loaded
/// by the server found here. Dotted vendor names are kept and listed.
pub fn sanitise_auto_conf(
    text: &str,
    owned: &[&str],
    library_loads: &dyn Fn(&str) -> bool,
) -> Sanitised {
    let mut out = Sanitised::default();
    for line in text.lines() {
        let Some(setting) = parse_line(line) else {
            out.text.push_str(line);
            out.text.push('\n');
            continue;
        };
        let name = setting.name.as_str();
        let disable = |reason: String, out: &mut Sanitised| {
            let _ = writeln!(out.text, "# wale: {reason}");
            let _ = writeln!(out.text, "#{line}");
            out.findings.push(Finding::Disabled {
                name: name.to_string(),
                reason,
            });
        };
        if PRELOAD_SETTINGS.contains(&name) {
            keep_loadable_libraries(line, &setting, library_loads, &mut out);
        } else if owned.contains(&name) {
            disable(
                format!("{name} is set by wale in postgresql.conf for this restore"),
                &mut out,
            );
        } else if name.starts_with("archive_") {
            disable(
                format!("{name}: a restored server must not write into the archive it reads"),
                &mut out,
            );
        } else if name.starts_with("recovery_")
            || name.starts_with("primary_")
            || name == "restore_command"
            || name == "synchronous_standby_names"
        {
            disable(
                format!(
                    "{name} belongs to the source's replication or recovery, not to this restore"
                ),
                &mut out,
            );
        } else if PATH_SETTINGS.contains(&name)
            && (setting.value.starts_with('/') || name.starts_with("include"))
        {
            disable(
                format!("{name} names a path on the source machine"),
                &mut out,
            );
        } else {
            if name.contains('.') {
                out.findings.push(Finding::VendorPlaceholder {
                    name: name.to_string(),
                });
            }
            out.text.push_str(line);
            out.text.push('\n');
        }
    }
    out
}

/// A preload list cut down to the libraries that load here, the original line commented
/// out with the reason (kept as it is when all of them load).
fn keep_loadable_libraries(
    line: &str,
    setting: &Setting,
    library_loads: &dyn Fn(&str) -> bool,
    out: &mut Sanitised,
) {
    let name = setting.name.as_str();
    let libraries: Vec<&str> = setting
        .value
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let (loadable, missing): (Vec<&str>, Vec<&str>) =
        libraries.iter().partition(|l| library_loads(l));
    if missing.is_empty() {
        out.text.push_str(line);
        out.text.push('\n');
        return;
    }
    let reason = format!(
        "{} not installed for the server found here",
        missing.join(", ")
    );
    let _ = writeln!(out.text, "# wale: {reason}");
    let _ = writeln!(out.text, "#{line}");
    if !loadable.is_empty() {
        let _ = writeln!(out.text, "{name} = {}", quote(&loadable.join(",")));
    }
    out.findings.push(Finding::LibrariesDropped {
        name: name.to_string(),
        dropped: missing.iter().map(|s| s.to_string()).collect(),
    });
}

/// Where a server looks for a library named in a preload list: an absolute or relative
/// path as given (with `$libdir` expanded), or `pkglibdir/<name>` with or without `.so`.
pub fn library_candidates(library: &str, pkglibdir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let expanded = library.replace("$libdir", &pkglibdir.to_string_lossy());
    let path = std::path::Path::new(&expanded);
    let base = if expanded.contains('/') {
        path.to_path_buf()
    } else {
        pkglibdir.join(path)
    };
    let mut candidates = vec![base.clone()];
    if base.extension().is_none_or(|e| e != "so") {
        let mut with_so = base.into_os_string();
        with_so.push(".so");
        candidates.push(with_so.into());
    }
    candidates
}

/// A local-only `pg_hba.conf`: peer authentication on the socket, passwords on loopback.
pub fn local_only_hba() -> String {
    "# Written by wale restore: local connections only.\n\
     # TYPE  DATABASE  USER  ADDRESS        METHOD\n\
     local   all       all                  peer\n\
     host    all       all   127.0.0.1/32   scram-sha-256\n\
     host    all       all   ::1/128        scram-sha-256\n\
     local   replication all                peer\n"
        .to_string()
}

/// An empty `pg_ident.conf` (PostgreSQL wants the file to exist).
pub fn empty_ident() -> String {
    "# Written by wale restore: no user name maps.\n".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_as_postgres_reads_them() {
        let s = parse_line("shared_preload_libraries = 'a,b' # note").unwrap();
        assert_eq!(s.name, "shared_preload_libraries");
        assert_eq!(s.value, "a,b");
        assert_eq!(parse_line("Port=5433").unwrap().value, "5433");
        assert_eq!(parse_line("port 5433 # x").unwrap().name, "port");
        assert_eq!(
            parse_line("archive_command = 'it''s \\\\ # not a comment'")
                .unwrap()
                .value,
            "it's \\ # not a comment"
        );
        assert_eq!(parse_line("  # comment"), None);
        assert_eq!(parse_line(""), None);
        assert_eq!(parse_line("x = 'unterminated"), None);
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(conninfo_quote(r"/a b/it's\x"), r"'/a b/it\'s\\x'");
        assert_eq!(shell_quote("/usr/bin/wale"), "/usr/bin/wale");
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }

    #[test]
    fn vendor_settings_are_commented_out_with_reasons() {
        let auto = "# Do not edit this file manually!\n\
                    shared_preload_libraries = 'pg_stat_statements,heroku_gatekeeper'\n\
                    heroku.vendor_flag = 'on'\n\
                    ssl_cert_file = '/etc/heroku/server.crt'\n\
                    archive_command = 'wal-e wal-push %p'\n\
                    primary_conninfo = 'host=x'\n\
                    max_connections = '50'\n\
                    work_mem = '64MB'\n\
                    log_directory = 'log'\n";
        let out = sanitise_auto_conf(auto, &["max_connections"], &|lib| {
            lib == "pg_stat_statements"
        });
        let live: Vec<&str> = out
            .text
            .lines()
            .filter(|l| parse_line(l).is_some())
            .collect();
        assert_eq!(
            live,
            [
                "shared_preload_libraries = 'pg_stat_statements'",
                "heroku.vendor_flag = 'on'",
                "work_mem = '64MB'",
                "log_directory = 'log'",
            ]
        );
        assert!(out.text.contains("# wale: heroku_gatekeeper not installed"));
        assert!(
            out.text
                .contains("#ssl_cert_file = '/etc/heroku/server.crt'")
        );
        assert!(out.findings.contains(&Finding::VendorPlaceholder {
            name: "heroku.vendor_flag".into()
        }));
        let disabled: Vec<&str> = out
            .findings
            .iter()
            .filter_map(|f| match f {
                Finding::Disabled { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            disabled,
            [
                "ssl_cert_file",
                "archive_command",
                "primary_conninfo",
                "max_connections"
            ]
        );
    }

    #[test]
    fn libraries_are_looked_for_where_postgres_looks() {
        let lib = std::path::Path::new("/usr/lib/postgresql/15/lib");
        assert_eq!(
            library_candidates("auto_explain", lib),
            [lib.join("auto_explain"), lib.join("auto_explain.so")]
        );
        assert_eq!(
            library_candidates("$libdir/plugins/x.so", lib),
            [lib.join("plugins/x.so")]
        );
    }
}

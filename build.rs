//! Two settings of the build that code cannot make:
//! - Tests learn whether they are built by root: the resource-fault tests mount a tmpfs,
//!   which needs root, and are reported as ignored (not passed) otherwise.
//! - The `wale` executable is linked at a fixed address (not position-independent), unless
//!   `WALE_PIE=1` is set when building. `wal-fetch` is started once per WAL segment by
//!   PostgreSQL, and a position-independent build spends a third of that start applying
//!   some 35 000 relocations and copying the pages they touch (a prefetch hit 2.7 ms
//!   against 1.8 ms). Shared libraries, the heap and the stacks stay randomised; only the
//!   executable's own image does not move.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(wale_tests_as_root)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=WALE_PIE");
    if built_by_root() {
        println!("cargo:rustc-cfg=wale_tests_as_root");
    }
    let cfg = |name: &str| std::env::var(name).unwrap_or_default();
    let glibc = cfg("CARGO_CFG_TARGET_OS") == "linux" && cfg("CARGO_CFG_TARGET_ENV") == "gnu";
    // A static build (`crt-static`) is linked `-static-pie`: left as it is.
    let dynamic = !cfg("CARGO_CFG_TARGET_FEATURE")
        .split(',')
        .any(|f| f == "crt-static");
    let pie_wanted = std::env::var("WALE_PIE").is_ok_and(|v| v == "1");
    if glibc && dynamic && !pie_wanted {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}

/// Whether the effective user building is root.
fn built_by_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

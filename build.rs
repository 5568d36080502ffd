//! Tells the tests whether they are built by root: the resource-fault tests mount a
//! tmpfs, which needs root, and are reported as ignored (not passed) otherwise.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(wale_tests_as_root)");
    println!("cargo:rerun-if-changed=build.rs");
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false);
    if root {
        println!("cargo:rustc-cfg=wale_tests_as_root");
    }
}

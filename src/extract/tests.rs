use super::*;

#[test]
fn member_paths_are_relative_and_clean() {
    let ok = |name: &str| {
        member_path(name.as_bytes())
            .unwrap()
            .map(|p| p.display().to_string())
    };
    assert_eq!(ok("/"), None);
    assert_eq!(ok(""), None);
    assert_eq!(ok("./"), None);
    assert_eq!(ok("base/1/"), Some("base/1".into()));
    assert_eq!(ok("./base//1"), Some("base/1".into()));
    for bad in ["/etc/passwd", "../x", "base/../../x", "a/..", "a\0b"] {
        assert!(member_path(bad.as_bytes()).is_err(), "{bad:?} accepted");
    }
}

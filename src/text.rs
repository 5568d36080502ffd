//! Wording shared by every command's output: counts with the noun they count.

/// `count` and the noun it counts, singular for exactly one: `1 segment`, `0 segments`,
/// `2 directories`.
pub fn counted(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_is_singular_and_every_other_count_plural() {
        assert_eq!(counted(1, "segment", "segments"), "1 segment");
        assert_eq!(counted(0, "segment", "segments"), "0 segments");
        assert_eq!(counted(2, "directory", "directories"), "2 directories");
        assert_eq!(counted(11, "symlink", "symlinks"), "11 symlinks");
    }
}

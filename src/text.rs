//! Wording shared by every command's output: counts with the noun they count, sizes.

/// `count` and the noun it counts, singular for exactly one: `1 segment`, `0 segments`,
/// `2 directories`.
pub fn counted(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// A size in the largest binary unit that keeps it at least 1.
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
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

    #[test]
    fn sizes_read_well() {
        assert_eq!(bytes_text(999), "999 bytes");
        assert_eq!(bytes_text(1_572_864), "1.5 MiB");
    }
}

use super::*;

/// Builds one ustar header block with a valid checksum.
fn header(name: &str, type_flag: u8, size: u64, link: &str, posix: bool) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[..name.len()].copy_from_slice(name.as_bytes());
    b[100..107].copy_from_slice(b"0000644");
    b[108..115].copy_from_slice(b"0000764");
    b[116..123].copy_from_slice(b"0000764");
    b[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    b[136..147].copy_from_slice(b"14727465232");
    b[156] = type_flag;
    b[157..157 + link.len()].copy_from_slice(link.as_bytes());
    if posix {
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
    } else {
        b[257..265].copy_from_slice(b"ustar  \0");
    }
    b[265..273].copy_from_slice(b"postgres");
    b[297..305].copy_from_slice(b"postgres");
    fix_checksum(&mut b);
    b
}

fn fix_checksum(b: &mut [u8; BLOCK]) {
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
}

fn member(out: &mut Vec<u8>, h: [u8; BLOCK], data: &[u8]) {
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len() + padding_of(data.len() as u64) as usize, 0);
}

fn pax(records: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = format!(" {k}={v}\n");
        let mut len = body.len() + 1;
        if (len + body.len()).to_string().len() > 1 {
            len = body.len() + (body.len() + 2).to_string().len();
        }
        out.extend_from_slice(format!("{len}{body}").as_bytes());
    }
    out
}

fn read_all(data: &[u8]) -> Result<Vec<(Header, Vec<u8>)>, Error> {
    let mut archive = Archive::new(data);
    let mut out = Vec::new();
    while let Some(h) = archive.next_header()? {
        let mut content = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            let n = archive.read_data(&mut buf)?;
            if n == 0 {
                break;
            }
            content.extend_from_slice(&buf[..n]);
        }
        out.push((h, content));
    }
    Ok(out)
}

fn end(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0u8; BLOCK * 2]);
}

#[test]
fn reads_ustar_files_dirs_links_and_the_root() {
    let mut t = Vec::new();
    member(&mut t, header("/", b'5', 0, "", true), b"");
    member(&mut t, header("base/", b'5', 0, "", true), b"");
    member(&mut t, header("base/1", b'0', 600, "", true), &[7u8; 600]);
    member(&mut t, header("pg_wal", b'2', 0, "/srv/wal", true), b"");
    member(&mut t, header("copy", b'1', 0, "base/1", true), b"");
    end(&mut t);
    let members = read_all(&t).unwrap();
    let kinds: Vec<_> = members
        .iter()
        .map(|(h, _)| (h.display_path(), h.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("/".to_string(), Kind::Directory),
            ("base/".into(), Kind::Directory),
            ("base/1".into(), Kind::File),
            ("pg_wal".into(), Kind::Symlink),
            ("copy".into(), Kind::HardLink),
        ]
    );
    assert_eq!(members[2].1, vec![7u8; 600]);
    assert_eq!(members[3].0.link.as_deref(), Some(&b"/srv/wal"[..]));
    assert_eq!(members[2].0.mode, 0o644);
    assert_eq!(members[2].0.uid, 0o764);
    assert_eq!(members[2].0.uname, "postgres");
}

#[test]
fn pax_records_override_the_header() {
    let long = "d/".repeat(80) + "file";
    let mut t = Vec::new();
    let records = pax(&[
        ("mtime", "1795561130.5374777"),
        ("path", &long),
        ("uname", "pg"),
    ]);
    member(
        &mut t,
        header("././@PaxHeader", b'x', records.len() as u64, "", true),
        &records,
    );
    member(&mut t, header("truncated-name", b'0', 3, "", true), b"abc");
    let global = pax(&[("gname", "grp")]);
    member(
        &mut t,
        header("pax_global_header", b'g', global.len() as u64, "", true),
        &global,
    );
    member(&mut t, header("next", b'0', 1, "", true), b"z");
    end(&mut t);
    let members = read_all(&t).unwrap();
    assert_eq!(members[0].0.display_path(), long);
    assert_eq!(members[0].0.mtime, (1_795_561_130, 537_477_700));
    assert_eq!(members[0].0.uname, "pg");
    assert_eq!(members[0].1, b"abc");
    // Per-member records apply once; global ones stay.
    assert_eq!(members[1].0.display_path(), "next");
    assert_eq!(members[1].0.uname, "postgres");
    assert_eq!(members[1].0.gname, "grp");
}

#[test]
fn global_records_never_rename_relink_or_resize_later_members() {
    let mut t = Vec::new();
    let global = pax(&[
        ("path", "evil"),
        ("linkpath", "/etc"),
        ("size", "99"),
        ("uname", "g"),
    ]);
    member(
        &mut t,
        header("pax_global_header", b'g', global.len() as u64, "", true),
        &global,
    );
    member(&mut t, header("a", b'0', 1, "", true), b"1");
    member(&mut t, header("b", b'2', 0, "target", true), b"");
    end(&mut t);
    let members = read_all(&t).unwrap();
    assert_eq!(members[0].0.display_path(), "a");
    assert_eq!(members[0].1, b"1");
    assert_eq!(members[0].0.uname, "g");
    assert_eq!(members[1].0.link.as_deref(), Some(&b"target"[..]));
}

#[test]
fn duplicate_and_dangling_extension_headers_are_refused() {
    let records = pax(&[("path", "p")]);
    let x = || header("././@PaxHeader", b'x', records.len() as u64, "", true);
    let mut twice = Vec::new();
    member(&mut twice, x(), &records);
    member(&mut twice, x(), &records);
    member(&mut twice, header("a", b'0', 0, "", true), b"");
    end(&mut twice);
    let err = read_all(&twice).unwrap_err().to_string();
    assert!(err.contains("two extension headers"), "{err}");

    let mut long_twice = Vec::new();
    for _ in 0..2 {
        member(
            &mut long_twice,
            header("././@LongLink", b'L', 5, "", false),
            b"name\0",
        );
    }
    member(&mut long_twice, header("a", b'0', 0, "", false), b"");
    end(&mut long_twice);
    assert!(read_all(&long_twice).is_err());

    let mut dangling = Vec::new();
    member(&mut dangling, header("a", b'0', 0, "", true), b"");
    member(&mut dangling, x(), &records);
    end(&mut dangling);
    let err = read_all(&dangling).unwrap_err().to_string();
    assert!(err.contains("describes no member"), "{err}");

    // One of each kind before a member is fine (GNU tar writes L and K together).
    let mut both = Vec::new();
    member(
        &mut both,
        header("././@LongLink", b'L', 5, "", false),
        b"name\0",
    );
    member(
        &mut both,
        header("././@LongLink", b'K', 5, "", false),
        b"link\0",
    );
    member(&mut both, header("a", b'2', 0, "", false), b"");
    end(&mut both);
    let members = read_all(&both).unwrap();
    assert_eq!(members[0].0.display_path(), "name");
}

#[test]
fn gnu_long_names_and_links() {
    let long = "x".repeat(300);
    let target = "y".repeat(200);
    let mut t = Vec::new();
    let mut name = long.as_bytes().to_vec();
    name.push(0);
    member(
        &mut t,
        header("././@LongLink", b'L', name.len() as u64, "", false),
        &name,
    );
    let mut link = target.as_bytes().to_vec();
    link.push(0);
    member(
        &mut t,
        header("././@LongLink", b'K', link.len() as u64, "", false),
        &link,
    );
    member(&mut t, header("short", b'2', 0, "short-target", false), b"");
    end(&mut t);
    let members = read_all(&t).unwrap();
    assert_eq!(members[0].0.display_path(), long);
    assert_eq!(members[0].0.link.as_deref(), Some(target.as_bytes()));
}

#[test]
fn ustar_prefix_is_joined_but_gnu_area_is_not_a_prefix() {
    let mut h = header("name", b'0', 0, "", true);
    h[345..351].copy_from_slice(b"prefix");
    fix_checksum(&mut h);
    let mut t = Vec::new();
    member(&mut t, h, b"");
    let mut g = header("gnuname", b'0', 0, "", false);
    g[345..351].copy_from_slice(b"\x01\x02\x03\x04\x05\x06");
    fix_checksum(&mut g);
    member(&mut t, g, b"");
    end(&mut t);
    let members = read_all(&t).unwrap();
    assert_eq!(members[0].0.display_path(), "prefix/name");
    assert_eq!(members[1].0.display_path(), "gnuname");
}

#[test]
fn base256_sizes_are_read() {
    let mut h = header("big", b'0', 0, "", false);
    h[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x00]);
    fix_checksum(&mut h);
    let mut t = Vec::new();
    member(&mut t, h, &[1u8; 512]);
    end(&mut t);
    assert_eq!(read_all(&t).unwrap()[0].1.len(), 512);
}

#[test]
fn damaged_streams_are_errors() {
    let mut t = Vec::new();
    member(&mut t, header("a", b'0', 100, "", true), &[1u8; 100]);
    end(&mut t);
    // Checksum.
    let mut bad = t.clone();
    bad[10] ^= 1;
    assert!(matches!(read_all(&bad), Err(Error::Corrupt { .. })));
    // Truncated inside data, inside a header, before the end marker.
    for len in [100, 300, 512, 1024] {
        assert!(read_all(&t[..len]).is_err(), "{len}");
    }
    // A symlink that claims data.
    let mut s = Vec::new();
    member(&mut s, header("l", b'2', 10, "t", true), &[0u8; 10]);
    end(&mut s);
    assert!(
        read_all(&s)
            .unwrap_err()
            .to_string()
            .contains("claims 10 data bytes")
    );
    // Huge pax data is refused before it is read.
    let mut p = Vec::new();
    p.extend_from_slice(&header(
        "././@PaxHeader",
        b'x',
        MAX_META_BYTES + 1,
        "",
        true,
    ));
    assert!(read_all(&p).is_err());
    // Malformed pax record.
    let mut q = Vec::new();
    member(
        &mut q,
        header("././@PaxHeader", b'x', 6, "", true),
        b"99 a=b",
    );
    member(&mut q, header("a", b'0', 0, "", true), b"");
    end(&mut q);
    assert!(read_all(&q).is_err());
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = fastrand::Rng::with_seed(11);
    let mut t = Vec::new();
    member(&mut t, header("a", b'0', 700, "", true), &[1u8; 700]);
    member(&mut t, header("b", b'5', 0, "", true), b"");
    end(&mut t);
    for _ in 0..3000 {
        let mut bad = t.clone();
        for _ in 0..rng.usize(1..6) {
            let i = rng.usize(..bad.len());
            bad[i] = rng.u8(..);
        }
        let _ = read_all(&bad);
    }
}

#[test]
fn pax_times() {
    assert_eq!(parse_pax_time("12").unwrap(), (12, 0));
    assert_eq!(parse_pax_time("12.5").unwrap(), (12, 500_000_000));
    assert!(parse_pax_time("-1.5").is_err());
    assert!(parse_pax_time("x").is_err());
}

//! The same contract for every backend: get, get from an offset, head, list with and
//! without a delimiter, and "not found" only for a missing object.

use wale::config::{Config, Env, GlobalFlags};
use wale::storage::{self, Storage, Store};

use crate::common::*;

async fn open(archive: &Archive, backend: Backend, server: &S3Server) -> (Store, String) {
    let pairs: Vec<(String, String)> = match backend {
        Backend::File => vec![("WALE_FILE_PREFIX".into(), archive.file_prefix())],
        Backend::S3 => server.env(archive),
    };
    let config = Config::resolve(&GlobalFlags::default(), &Env::from_pairs(pairs)).unwrap();
    let prefix = config.store.path_prefix().to_string();
    (Store::open(&config.store).await.unwrap(), prefix)
}

fn read_all(object: storage::ObjectReader) -> Vec<u8> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut object.into_blocking_read(), &mut bytes).unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_keeps_the_storage_contract() {
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    for backend in BACKENDS {
        let (store, prefix) = open(&archive, backend, &server).await;
        check_contract(&store, &prefix, &archive.root(), &format!("{backend:?}")).await;
    }
}

/// The contract, checked on `store` holding the fixture archive (a copy of it at
/// `archive_root`) under `prefix`.
pub(crate) async fn check_contract(
    store: &Store,
    prefix: &str,
    archive_root: &std::path::Path,
    backend: &str,
) {
    let name = fixture_meta("END_WAL_SEGMENT");
    let on_disk = std::fs::read(archive_root.join(format!("wal_005/{name}.lzo"))).unwrap();
    {
        let key = format!("{prefix}wal_005/{name}.lzo");
        let object = store.get(&key).await.unwrap();
        assert_eq!(object.size, Some(on_disk.len() as u64), "{backend}");
        let whole = tokio::task::spawn_blocking(move || read_all(object))
            .await
            .unwrap();
        assert!(whole == on_disk, "{backend}: get");

        let tail = store.get_range(&key, 1000).await.unwrap();
        let tail = tokio::task::spawn_blocking(move || read_all(tail))
            .await
            .unwrap();
        assert!(tail == on_disk[1000..], "{backend}: get_range");

        let meta = store.head(&key).await.unwrap();
        assert_eq!(meta.size, on_disk.len() as u64, "{backend}: head");
        assert_eq!(meta.key, key);

        let level = store
            .list(&format!("{prefix}basebackups_005/"), Some("/"))
            .await
            .unwrap();
        let backup = fixture_meta("BACKUP_NAME");
        assert!(
            level.objects.iter().any(|o| o
                .key
                .ends_with(&format!("{backup}_backup_stop_sentinel.json"))),
            "{backend}"
        );
        assert!(
            level
                .common_prefixes
                .contains(&format!("{prefix}basebackups_005/{backup}/")),
            "{backend}"
        );
        assert!(
            level
                .objects
                .iter()
                .all(|o| !o.key.contains("tar_partitions")),
            "{backend}: the delimiter was ignored"
        );
        let deep = store
            .list(&format!("{prefix}basebackups_005/{backup}/"), None)
            .await
            .unwrap();
        let partitions = deep
            .objects
            .iter()
            .filter(|o| o.key.contains("/tar_partitions/part_"))
            .count();
        assert_eq!(
            partitions.to_string(),
            fixture_meta("PARTITION_COUNT"),
            "{backend}: recursive list"
        );
        let mut keys: Vec<_> = deep.objects.iter().map(|o| o.key.clone()).collect();
        let listed = keys.clone();
        keys.sort();
        assert_eq!(listed, keys, "{backend}: listings are sorted");

        let missing = format!("{prefix}wal_005/0000000100000000000000FF.lzo");
        for err in [
            store.get(&missing).await.err().unwrap(),
            store.head(&missing).await.err().unwrap(),
        ] {
            assert!(
                matches!(err, storage::Error::NotFound { .. }),
                "{backend}: {err}"
            );
        }
        assert!(
            store
                .list(&format!("{prefix}nothing-here/"), Some("/"))
                .await
                .unwrap()
                .objects
                .is_empty()
        );
    }
}

/// Paged listings: every page in key order, nothing skipped or repeated, the same on
/// every backend, whatever the page size; a start key in the middle, a partial name, and
/// a start key outside the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_listings_walk_the_directory_in_key_order() {
    let archive = Archive::fixture_copy();
    // A subdirectory and a file with the prefix's name start must not disturb the walk.
    std::fs::create_dir(archive.root().join("wal_005/0000000100000000000000FF.dir")).unwrap();
    let server = S3Server::start(&archive.s3_root());
    let mut expected: Vec<String> = std::fs::read_dir(archive.root().join("wal_005"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    expected.sort();
    assert!(expected.len() > 5);
    for backend in BACKENDS {
        let (store, prefix) = open(&archive, backend, &server).await;
        check_paging(&store, &prefix, &expected, &format!("{backend:?}")).await;
    }
}

/// Paged walks of `prefix`'s `wal_005/`, whose object names are `expected` (sorted).
pub(crate) async fn check_paging(store: &Store, prefix: &str, expected: &[String], backend: &str) {
    let dir = format!("{prefix}wal_005/");
    for limit in [1, 3, 1000] {
        let mut walked = Vec::new();
        let mut after = String::new();
        loop {
            let page = store.list_after(&dir, &after, limit).await.unwrap();
            assert!(page.len() <= limit, "{backend}: page of {}", page.len());
            let Some(last) = page.last() else { break };
            after = last.key.clone();
            walked.extend(page.iter().map(|o| o.key[dir.len()..].to_string()));
        }
        assert_eq!(walked, expected, "{backend}, pages of {limit}");
        let mut walk = store.walk(&dir, "", limit);
        let mut walked = Vec::new();
        loop {
            let page = store.page(&walk).await.unwrap();
            assert!(
                page.len() <= limit,
                "{backend}: walk's page of {}",
                page.len()
            );
            let Some(last) = page.last() else { break };
            walk.advance_past(&last.key);
            walked.extend(page.iter().map(|o| o.key[dir.len()..].to_string()));
        }
        assert_eq!(walked, expected, "{backend}, a walk in pages of {limit}");
    }
    let middle = format!("{dir}{}", expected[2]);
    let mut walk = store.walk(&dir, &middle, 2);
    let first = store.page(&walk).await.unwrap();
    let names: Vec<&str> = first.iter().map(|o| &o.key[dir.len()..]).collect();
    assert_eq!(names, &expected[3..5], "{backend}: a walk from the middle");
    walk.advance_past(&first[1].key);
    let second = store.page(&walk).await.unwrap();
    assert_eq!(
        second[0].key[dir.len()..],
        expected[5],
        "{backend}: its second page"
    );
    let partial = format!("{dir}{}", &expected[0][..20]);
    let walked = store.page(&store.walk(&partial, "", 1000)).await.unwrap();
    assert!(
        !walked.is_empty() && walked.iter().all(|o| o.key.starts_with(&partial)),
        "{backend}: a walk of a partial name"
    );
    let nowhere = format!("{prefix}no_such_directory/");
    let walked = store.page(&store.walk(&nowhere, "", 10)).await.unwrap();
    assert!(
        walked.is_empty(),
        "{backend}: a walk of a missing directory"
    );
    let page = store.list_after(&dir, &middle, 2).await.unwrap();
    let names: Vec<&str> = page.iter().map(|o| &o.key[dir.len()..]).collect();
    assert_eq!(names, &expected[3..5], "{backend}: from the middle");
    let beyond = store
        .list_after(&dir, &format!("{prefix}zzz"), 10)
        .await
        .unwrap();
    assert!(beyond.is_empty(), "{backend}: after the directory");
    let partial = format!("{dir}{}", &expected[0][..20]);
    let page = store.list_after(&partial, "", 1000).await.unwrap();
    assert!(
        !page.is_empty() && page.iter().all(|o| o.key.starts_with(&partial)),
        "{backend}: a partial name"
    );
}

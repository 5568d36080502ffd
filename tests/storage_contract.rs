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
    let name = fixture_meta("END_WAL_SEGMENT");
    let on_disk = std::fs::read(archive.wal_object(&name)).unwrap();
    for backend in BACKENDS {
        let (store, prefix) = open(&archive, backend, &server).await;
        let key = format!("{prefix}wal_005/{name}.lzo");

        let object = store.get(&key).await.unwrap();
        assert_eq!(object.size, Some(on_disk.len() as u64), "{backend:?}");
        let whole = tokio::task::spawn_blocking(move || read_all(object))
            .await
            .unwrap();
        assert!(whole == on_disk, "{backend:?}: get");

        let tail = store.get_range(&key, 1000).await.unwrap();
        let tail = tokio::task::spawn_blocking(move || read_all(tail))
            .await
            .unwrap();
        assert!(tail == on_disk[1000..], "{backend:?}: get_range");

        let meta = store.head(&key).await.unwrap();
        assert_eq!(meta.size, on_disk.len() as u64, "{backend:?}: head");
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
            "{backend:?}"
        );
        assert!(
            level
                .common_prefixes
                .contains(&format!("{prefix}basebackups_005/{backup}/")),
            "{backend:?}"
        );
        assert!(
            level
                .objects
                .iter()
                .all(|o| !o.key.contains("tar_partitions")),
            "{backend:?}: the delimiter was ignored"
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
            "{backend:?}: recursive list"
        );
        let mut keys: Vec<_> = deep.objects.iter().map(|o| o.key.clone()).collect();
        let listed = keys.clone();
        keys.sort();
        assert_eq!(listed, keys, "{backend:?}: listings are sorted");

        let missing = format!("{prefix}wal_005/0000000100000000000000FF.lzo");
        for err in [
            store.get(&missing).await.err().unwrap(),
            store.head(&missing).await.err().unwrap(),
        ] {
            assert!(
                matches!(err, storage::Error::NotFound { .. }),
                "{backend:?}: {err}"
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

//! The object-store side of storage against a real 3-node Garage cluster:
//! verified uploads appear whole or not at all, whichever node is asked.

use xfer::objects::{Bucket, PART};
use xfer::protocol::{ErrorCode, Timestamp, WirePath};

use crate::support::garage::Garage;
use crate::support::random_bytes;

fn p(s: &str) -> WirePath {
    WirePath::parse(s).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

async fn put(b: &Bucket, path: &str, data: &[u8], chunk: usize) -> Result<(), xfer::store::StoreError> {
    let mut up = b.upload(&p(path), 0o644, Timestamp { secs: 1_700_000_000, nanos: 7 }, None).unwrap();
    for piece in data.chunks(chunk.max(1)) {
        up.write(piece).await?;
    }
    up.finish(data.len() as u64, *blake3::hash(data).as_bytes()).await
}

#[test]
fn verified_uploads_appear_whole_through_every_node_and_bad_ones_never() {
    let g = Garage::start();
    let (one, two) = (g.bucket("ci", 1), g.bucket("ci", 2));
    rt().block_on(async {
        one.check().await.unwrap();
        // Three parts and a tail (multipart), and a small file (one PUT).
        let big = random_bytes(3 * PART + 12_345, 1);
        put(&one, "dist/app.bin", &big, 1 << 20).await.unwrap();
        put(&one, "dist/notes.txt", b"small", 3).await.unwrap();
        // Names S3 tools often escape come back as they went.
        put(&one, "odd/a b%20~#[x]?.txt", b"odd", 3).await.unwrap();
        // (Listed through the writing node: Garage's listings through
        // another node can lag; single objects never do.)
        let odd: Vec<String> = one.list(&p("odd")).await.unwrap().into_iter().map(|e| e.path.to_string()).collect();
        assert_eq!(odd, ["odd/a b%20~#[x]?.txt"]);
        assert_eq!(two.read(&p("odd/a b%20~#[x]?.txt")).await.unwrap(), &b"odd"[..]);
        assert_eq!(two.read(&p("dist/app.bin")).await.unwrap(), big, "read back through another node");
        assert_eq!(two.read_range(&p("dist/app.bin"), 5..9).await.unwrap(), big[5..9]);
        let names: Vec<String> = one.list(&p("dist")).await.unwrap().into_iter().map(|e| e.path.to_string()).collect();
        assert_eq!(names, ["dist/app.bin", "dist/notes.txt"]);
        let top = one.list(&WirePath::root()).await.unwrap();
        assert!(top.len() == 2 && top[0].is_dir && top[0].path.as_str() == "dist", "{top:?}");

        // A payload whose BLAKE3 disagrees: refused, and the earlier
        // version stays, whole.
        let other = random_bytes(2 * PART + 1, 2);
        let mut up = one.upload(&p("dist/app.bin"), 0o644, Timestamp::default(), None).unwrap();
        up.write(&other).await.unwrap();
        let e = up.finish(other.len() as u64, [0; 32]).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Integrity);
        assert_eq!(two.read(&p("dist/app.bin")).await.unwrap(), big);
        let e = put(&one, "dist/short.txt", b"abc", 1).await.map(|_| ());
        assert!(e.is_ok());
        let mut up = one.upload(&p("dist/never.txt"), 0o644, Timestamp::default(), None).unwrap();
        up.write(b"abc").await.unwrap();
        assert_eq!(up.finish(4, *blake3::hash(b"abc").as_bytes()).await.unwrap_err().code, ErrorCode::Integrity);
        assert_eq!(two.read(&p("dist/never.txt")).await.unwrap_err().code, ErrorCode::NotFound);

        two.remove(&p("dist/short.txt")).await.unwrap();

        // xfer's own area and the folder-marker name are not a peer's.
        for (path, code) in [
            (".xfer/sums/x.json", ErrorCode::Denied),
            (".XFER/partial/x.json", ErrorCode::Denied),
            ("a/.xfer-folder", ErrorCode::BadPath),
        ] {
            assert_eq!(one.upload(&p(path), 0o644, Timestamp::default(), None).err().unwrap().code, code, "{path}");
            assert_eq!(one.read(&p(path)).await.unwrap_err().code, code, "{path}");
            assert_eq!(one.remove_path(&p(path), true).await.unwrap_err().code, code, "{path}");
        }
        assert_eq!(one.list(&p(".xfer")).await.unwrap_err().code, ErrorCode::Denied);
        assert_eq!(one.read(&p("dist/short.txt")).await.unwrap_err().code, ErrorCode::NotFound);
    });
}

#[test]
fn concurrent_uploads_of_one_path_through_two_nodes_leave_one_whole_version() {
    let g = Garage::start();
    let (one, two) = (g.bucket("race", 1), g.bucket("race", 3));
    let (a, b) = (random_bytes(2 * PART + 99, 3), random_bytes(2 * PART + 7, 4));
    rt().block_on(async {
        let (ra, rb) = tokio::join!(put(&one, "same", &a, 256 << 10), put(&two, "same", &b, 256 << 10));
        // Under load Garage may refuse to complete one of two multipart
        // uploads of one key; the other wins, whole. Never both refused.
        assert!(ra.is_ok() || rb.is_ok(), "both refused: {ra:?} {rb:?}");
        let got = one.read(&p("same")).await.unwrap();
        let whole = (ra.is_ok() && got == a) || (rb.is_ok() && got == b);
        assert!(whole, "not one whole, completed version: {} bytes ({ra:?}, {rb:?})", got.len());
    });
}

#[test]
fn an_upload_survives_a_killed_node_and_a_store_that_refuses_is_said_plainly() {
    let g = Garage::start();
    let (one, three) = (g.bucket("kill", 1), g.bucket("kill", 3));
    rt().block_on(async {
        let data = random_bytes(4 * PART, 5);
        let mut up = one.upload(&p("big"), 0o644, Timestamp::default(), None).unwrap();
        up.write(&data[..2 * PART]).await.unwrap();
        g.kill(2); // replication 3: two nodes still hold a quorum
        up.write(&data[2 * PART..]).await.unwrap();
        up.finish(data.len() as u64, *blake3::hash(&data).as_bytes()).await.unwrap();
        assert_eq!(three.read(&p("big")).await.unwrap(), data);

        let missing = Bucket::open(
            "s3://no-such-bucket".parse().unwrap(),
            &xfer::objects::Access {
                endpoint: Some(g.endpoint(1)),
                region: Some("garage".into()),
                keys: Some((g.env["AWS_ACCESS_KEY_ID"].clone(), g.env["AWS_SECRET_ACCESS_KEY"].clone())),
            },
        )
        .unwrap();
        let e = missing.check().await.unwrap_err();
        assert_eq!(e.message, "cannot use s3://no-such-bucket: the bucket does not exist");
        let wrong = Bucket::open(
            "s3://xfer".parse().unwrap(),
            &xfer::objects::Access {
                endpoint: Some(g.endpoint(1)),
                region: Some("garage".into()),
                keys: Some(("GK00000000000000000000000".into(), "0".repeat(64))),
            },
        )
        .unwrap();
        let e = wrong.check().await.unwrap_err();
        assert!(!e.message.contains(&"0".repeat(64)), "a secret in a message: {}", e.message);
        assert!(e.message.contains("credentials were refused"), "{}", e.message);
        g.kill(1);
        let e = one.check().await.unwrap_err();
        assert!(e.message.contains("the store did not answer"), "{}", e.message);
    });
}

/// A push cut off after some parts (its server gone) is finished through
/// another node from the state kept in the bucket: the prefix offered is
/// the stored parts' BLAKE3, merged without reading them back, and the
/// object is identical. An abandoned one is expired, its upload aborted.
#[test]
fn an_interrupted_upload_resumes_through_another_node_and_an_abandoned_one_expires() {
    let g = Garage::start();
    let (one, three) = (g.bucket("resume", 1), g.bucket("resume", 3));
    let data = random_bytes(3 * PART + 4_321, 6);
    let mtime = Timestamp { secs: 1_700_000_000, nanos: 1 };
    let id = || xfer::partial::PartialId::new("runner-1", &p("dist/big.bin"), data.len() as u64, mtime);
    rt().block_on(async {
        let mut up = one.upload(&p("dist/big.bin"), 0o644, mtime, Some(id())).unwrap();
        up.write(&data[..2 * PART + 100]).await.unwrap();
        up.suspend().await; // the connection is cut: what arrived is kept
        let r = three.partial(&id()).await.expect("a partial upload is kept");
        assert!(r.offset > 0 && r.offset % PART as u64 == 0, "{}", r.offset);
        assert_eq!(r.prefix, *blake3::hash(&data[..r.offset as usize]).as_bytes());
        assert!(
            three.partial(&xfer::partial::PartialId::new("runner-1", &p("dist/big.bin"), 5, mtime)).await.is_none()
        );
        let offset = r.offset as usize;
        let mut up = three.resume(id(), r, 0o644, mtime).unwrap();
        up.write(&data[offset..]).await.unwrap();
        up.finish(data.len() as u64, *blake3::hash(&data).as_bytes()).await.unwrap();
        assert_eq!(one.read(&p("dist/big.bin")).await.unwrap(), data);
        assert!(one.partial(&id()).await.is_none(), "a finished upload leaves no state");

        let left = xfer::partial::PartialId::new("runner-2", &p("dist/left.bin"), data.len() as u64, mtime);
        let mut up = one.upload(&p("dist/left.bin"), 0o644, mtime, Some(left.clone())).unwrap();
        up.write(&data[..2 * PART + 1]).await.unwrap();
        up.suspend().await;
        assert!(one.partial(&left).await.is_some());
        assert_eq!(one.expire_partials(std::time::Duration::from_secs(3600)).await, 0, "young ones stay");
        assert_eq!(one.expire_partials(std::time::Duration::ZERO).await, 1);
        assert!(one.partial(&left).await.is_none());
        assert_eq!(one.read(&p("dist/left.bin")).await.unwrap_err().code, ErrorCode::NotFound);
    });
}

/// mtime, mode and BLAKE3 come back with a file (a small one's in its
/// metadata, a multipart one's from a record checked against its ETag);
/// empty folders exist through a marker; removal is by file or, with
/// `recursive`, by whole folder.
#[test]
fn files_keep_their_metadata_and_folders_are_made_and_removed() {
    let g = Garage::start();
    let (one, two) = (g.bucket("meta", 1), g.bucket("meta", 2));
    let mtime = Timestamp { secs: 1_600_000_000, nanos: 123_456_789 };
    rt().block_on(async {
        let big = random_bytes(2 * PART + 3, 7);
        for (path, data, mode) in [("a/small.sh", &b"#!/bin/sh\n"[..], 0o755), ("a/big.bin", &big[..], 0o644)] {
            let mut up = two.upload(&p(path), mode | 0o4000, mtime, None).unwrap();
            up.write(data).await.unwrap();
            up.finish(data.len() as u64, *blake3::hash(data).as_bytes()).await.unwrap();
            let info = one.stat(&p(path)).await.unwrap().expect("stored");
            let want = xfer::objects::Info {
                size: data.len() as u64,
                mtime,
                mode,
                blake3: Some(*blake3::hash(data).as_bytes()),
            };
            assert_eq!(info, want, "{path}");
        }
        assert_eq!(one.stat(&p("a/none")).await.unwrap(), None);

        // Replaced by a single PUT from elsewhere: the old record no longer
        // matches the object's ETag, so it is not believed.
        let mut up = two.upload(&p("a/big.bin"), 0o644, mtime, None).unwrap();
        up.write(b"x").await.unwrap();
        up.finish(1, *blake3::hash(b"x").as_bytes()).await.unwrap();
        assert_eq!(one.stat(&p("a/big.bin")).await.unwrap().unwrap().blake3, Some(*blake3::hash(b"x").as_bytes()));

        two.mkdir(&p("a/empty")).await.unwrap();
        let listed: Vec<(String, bool)> =
            two.list(&p("a")).await.unwrap().into_iter().map(|e| (e.path.to_string(), e.is_dir)).collect();
        assert_eq!(listed, [("a/big.bin".into(), false), ("a/empty".into(), true), ("a/small.sh".into(), false)]);
        assert!(two.list(&p("a/empty")).await.unwrap().is_empty(), "the marker is not listed");

        assert_eq!(two.remove_path(&p("a"), false).await.unwrap_err().code, ErrorCode::Conflict);
        two.remove_path(&p("a/empty"), false).await.unwrap();
        two.remove_path(&p("a/small.sh"), false).await.unwrap();
        assert_eq!(one.stat(&p("a/small.sh")).await.unwrap(), None);
        two.remove_path(&p("a"), true).await.unwrap();
        // Listed through the node that removed: Garage's listings through
        // another node can lag for seconds (single objects never do).
        assert!(two.list(&WirePath::root()).await.unwrap().is_empty());
        assert_eq!(one.stat(&p("a/big.bin")).await.unwrap(), None);
        assert_eq!(two.remove_path(&p("a"), true).await.unwrap_err().code, ErrorCode::NotFound);
    });
}

/// Past 10,000 parts of 8 MiB, parts grow (powers of two, each still a
/// BLAKE3 subtree): an upload of larger parts completes, and resumes from
/// its state with its own part size.
#[test]
fn larger_parts_hash_complete_and_resume_as_their_own_size() {
    let g = Garage::start();
    let b = g.bucket("parts", 1);
    let part = 2 * PART;
    let data = random_bytes(2 * part + 5_000, 8);
    let mtime = Timestamp { secs: 1_700_000_000, nanos: 2 };
    let id = || xfer::partial::PartialId::new("runner-1", &p("huge.bin"), data.len() as u64, mtime);
    rt().block_on(async {
        let mut up = b.upload(&p("huge.bin"), 0o644, mtime, Some(id())).unwrap().with_part_len(part);
        up.write(&data[..part + 100]).await.unwrap();
        up.write(&data[part + 100..2 * part + 1]).await.unwrap();
        up.suspend().await;
        let r = b.partial(&id()).await.expect("a partial upload is kept");
        assert_eq!(r.offset, 2 * part as u64, "two stored parts of {part} bytes");
        assert_eq!(r.prefix, *blake3::hash(&data[..2 * part]).as_bytes());
        let mut up = b.resume(id(), r, 0o644, mtime).unwrap();
        up.write(&data[2 * part..]).await.unwrap();
        up.finish(data.len() as u64, *blake3::hash(&data).as_bytes()).await.unwrap();
        assert_eq!(b.read(&p("huge.bin")).await.unwrap(), data);
        let info = b.stat(&p("huge.bin")).await.unwrap().unwrap();
        assert_eq!(info.blake3, Some(*blake3::hash(&data).as_bytes()));
    });
}

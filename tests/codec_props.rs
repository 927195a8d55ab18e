//! Property tests of the pure frame codec: any frame encodes and decodes
//! back to itself, and no input makes the decoder panic or over-read.

use bytes::Bytes;
use proptest::prelude::*;
use xfer::protocol::enroll::{Refusal, Request, Response};
use xfer::protocol::{ErrorCode, FileHeader, Frame, Have, ListEntry, Offer, Timestamp, WirePath};

fn component() -> impl Strategy<Value = String> {
    // Printable names, avoiding the characters and forms the rules refuse.
    "[A-Za-z0-9._ -]{1,40}".prop_filter("not . or ..", |c| c != "." && c != "..")
}

fn wire_path() -> impl Strategy<Value = WirePath> {
    prop::collection::vec(component(), 0..6).prop_map(|cs| WirePath::parse(&cs.join("/")).unwrap())
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    (any::<i64>(), 0u32..1_000_000_000).prop_map(|(secs, nanos)| Timestamp { secs, nanos })
}

fn text() -> impl Strategy<Value = String> {
    ".{0,200}"
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (wire_path(), 1..u64::MAX, any::<u64>(), any::<u32>(), timestamp()).prop_map(
            |(path, size, at, mode, mtime)| {
                Frame::File(FileHeader { offset: at % (size + 1), ..FileHeader::new(path, size, mode, mtime) })
            }
        ),
        (wire_path(), any::<u64>(), timestamp()).prop_map(|(path, size, mtime)| Frame::Probe { path, size, mtime }),
        (wire_path(), 0..u64::MAX, timestamp(), any::<u64>(), any::<[u8; 32]>()).prop_map(
            |(path, size, mtime, at, prefix)| Frame::Offer(Offer {
                path,
                size,
                mtime,
                offset: at % (size + 1),
                prefix
            })
        ),
        (any::<u64>(), any::<[u8; 32]>(), any::<Option<[u8; 32]>>())
            .prop_map(|(offset, prefix, complete)| Frame::Have(Have { offset, prefix, complete })),
        (any::<u64>(), any::<u64>()).prop_map(|(files, bytes)| Frame::Total { files, bytes }),
        (wire_path(), any::<u32>(), timestamp()).prop_map(|(path, mode, mtime)| Frame::Dir { path, mode, mtime }),
        (wire_path(), text()).prop_map(|(path, reason)| Frame::Skipped { path, reason }),
        wire_path().prop_map(|path| Frame::Get { path }),
        wire_path().prop_map(|path| Frame::List { path }),
        (wire_path(), any::<bool>()).prop_map(|(path, recursive)| Frame::Remove { path, recursive }),
        prop::collection::vec(any::<u8>(), 1..2048).prop_map(|d| Frame::Data(Bytes::from(d))),
        any::<[u8; 32]>().prop_map(|blake3| Frame::End { blake3 }),
        text().prop_map(|reason| Frame::Abort { reason }),
        (any::<u64>(), any::<[u8; 32]>()).prop_map(|(size, blake3)| Frame::Stored { size, blake3 }),
        Just(Frame::Ok),
        (wire_path(), any::<u64>(), timestamp(), any::<bool>())
            .prop_map(|(path, size, mtime, is_dir)| Frame::Entry(ListEntry { path, size, mtime, is_dir })),
        (1u16..20, text()).prop_map(|(code, message)| {
            let code =
                [ErrorCode::Protocol, ErrorCode::Denied, ErrorCode::NotFound, ErrorCode::Integrity][code as usize % 4];
            Frame::Error { code, message }
        }),
    ]
}

proptest! {
    #[test]
    fn any_frame_round_trips_exactly(f in frame()) {
        let mut buf = Vec::new();
        f.encode(&mut buf);
        let (back, used) = Frame::decode(&buf).unwrap().unwrap();
        prop_assert_eq!(used, buf.len());
        prop_assert_eq!(back, f);
    }

    #[test]
    fn a_stream_of_frames_decodes_in_order(frames in prop::collection::vec(frame(), 1..20)) {
        let mut buf = Vec::new();
        for f in &frames {
            f.encode(&mut buf);
        }
        let mut at = 0;
        for want in &frames {
            let (got, n) = Frame::decode(&buf[at..]).unwrap().unwrap();
            prop_assert_eq!(&got, want);
            at += n;
        }
        prop_assert_eq!(at, buf.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_over_read(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok(Some((_, used))) = Frame::decode(&bytes) {
            prop_assert!(used <= bytes.len());
        }
    }

    #[test]
    fn arbitrary_paths_either_validate_or_are_refused_without_panic(s in ".{0,300}") {
        if let Ok(p) = WirePath::parse(&s) {
            // A valid path re-validates to itself and never climbs out.
            prop_assert_eq!(WirePath::parse(p.as_str()).unwrap(), p.clone());
            prop_assert!(p.components().all(|c| c != ".." && c != "." && !c.is_empty()));
            prop_assert!(!p.as_str().starts_with('/'));
        }
    }

    #[test]
    fn any_enrollment_message_round_trips_exactly(
        (req, resp) in (enroll_request(), enroll_response())
    ) {
        let bytes = req.encode();
        prop_assert_eq!(Request::decode(&bytes).unwrap(), Some((req, bytes.len())));
        let bytes = resp.encode();
        prop_assert_eq!(Response::decode(&bytes).unwrap(), Some((resp, bytes.len())));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_enrollment_decoders(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        // Both directions, with a plausible header in front half the time.
        for input in [bytes.clone(), [&[0x50u8, 0, 0, 0, bytes.len().min(255) as u8][..], &bytes].concat()] {
            if let Ok(Some((req, used))) = Request::decode(&input) {
                prop_assert!(used <= input.len());
                prop_assert_eq!(&req.encode()[..], &input[..used]);
            }
            if let Ok(Some((resp, used))) = Response::decode(&input) {
                prop_assert!(used <= input.len());
                prop_assert_eq!(&resp.encode()[..], &input[..used]);
            }
        }
    }
}

fn der() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 1..600)
}

fn enroll_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<[u8; 8]>(), prop::collection::vec(any::<u8>(), 64), der())
            .prop_map(|(token_id, proof, csr)| { Request::Enroll { token_id, proof: proof.try_into().unwrap(), csr } }),
        (any::<bool>(), der()).prop_map(|(revoke_old, csr)| Request::Renew { revoke_old, csr }),
    ]
}

fn enroll_response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (der(), prop::collection::vec(der(), 1..4), prop::option::of(der()))
            .prop_map(|(cert, cas, crl)| Response::Issued { cert, cas, crl }),
        (1u16..9, ".{0,100}").prop_map(|(code, message)| Response::Refused {
            refusal: match code {
                1 => Refusal::InvalidInvite,
                2 => Refusal::RateLimited,
                3 => Refusal::BadRequest,
                4 => Refusal::NotRenewable,
                5 => Refusal::Internal,
                n => Refusal::Unknown(n),
            },
            message
        }),
    ]
}

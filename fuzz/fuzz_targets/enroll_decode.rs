//! Feeds arbitrary bytes to the enrollment decoders (both directions): they
//! must never panic or read past their input, and whatever they accept must
//! re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xfer::protocol::enroll::{Request, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((req, used))) = Request::decode(data) {
        assert!(used <= data.len());
        assert_eq!(&req.encode()[..], &data[..used], "decode/encode is not exact for {req:?}");
    }
    if let Ok(Some((resp, used))) = Response::decode(data) {
        assert!(used <= data.len());
        assert_eq!(&resp.encode()[..], &data[..used], "decode/encode is not exact for {resp:?}");
    }
});

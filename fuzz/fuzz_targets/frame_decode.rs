//! Feeds arbitrary bytes to the frame decoder: it must never panic or read
//! past its input, and whatever it accepts must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xfer::protocol::{Frame, WirePath};

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((frame, used))) = Frame::decode(&data[at..]) {
        assert!(used <= data.len() - at);
        let mut again = Vec::new();
        frame.encode(&mut again);
        assert_eq!(&again[..], &data[at..at + used], "decode/encode is not exact for {frame:?}");
        at += used;
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(p) = WirePath::parse(s) {
            assert_eq!(WirePath::parse(p.as_str()), Ok(p));
        }
    }
});

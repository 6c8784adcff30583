//! Frame decoding: any byte string either fails cleanly or decodes to a value whose encoding is
//! exactly those bytes (nothing ignored, nothing accepted twice), for requests and responses,
//! whole-buffer and streaming.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{Request, Response, frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = frame::decode::<Request>(data) {
        assert_eq!(frame::encode(&request).expect("re-encode"), data);
    }
    if let Ok(response) = frame::decode::<Response>(data) {
        assert_eq!(frame::encode(&response).expect("re-encode"), data);
    }
    let streamed = frame::read_exact_one::<Request>(&mut &data[..]);
    assert_eq!(streamed.is_ok(), frame::decode::<Request>(data).is_ok());
});

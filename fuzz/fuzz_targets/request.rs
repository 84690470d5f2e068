//! The MQTT request and response decoders (plain text, JSON, postcard) on hostile payloads.
//! A payload that decodes must re-encode and decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llamabus::mqtt::wire::{decode_request, decode_response, encode_request, Encoding};

fuzz_target!(|data: &[u8]| {
    for enc in [Encoding::Text, Encoding::Json, Encoding::Postcard] {
        if let Ok(req) = decode_request(data, enc) {
            if enc != Encoding::Text {
                let bytes = encode_request(&req, enc).expect("a decoded request re-encodes");
                let again = decode_request(&bytes, enc).expect("a re-encoded request decodes");
                assert_eq!(again, req, "{enc:?} round trip");
            }
        }
        let _ = decode_response(data, enc);
    }
});

//! Golden postcard bytes: the exact envelope of every message type, pinned so that firmware
//! built against an older llamabus keeps decoding.

use crate::fixtures::{chat_request, chunk, error_reply, full_request, reply};
use crate::{hex, unhex};
use llamabus::mqtt::wire::*;

/// Checks the exact envelope bytes of a request and that they decode back to it.
#[track_caller]
fn golden_request(r: &Request, expected_hex: &str) {
    let bytes = encode_request_postcard(r);
    assert_eq!(
        hex(&bytes),
        hex(&unhex(expected_hex)),
        "wire format changed"
    );
    assert_eq!(decode_request(&bytes, Encoding::Postcard).unwrap(), *r);
    assert_eq!(encode_request(r, Encoding::Postcard).unwrap(), bytes);
}

#[track_caller]
fn golden_response(r: &Response, expected_hex: &str) {
    let bytes = encode_response(r, Encoding::Postcard);
    assert_eq!(
        hex(&bytes),
        hex(&unhex(expected_hex)),
        "wire format changed"
    );
    assert_eq!(decode_response(&bytes, Encoding::Postcard).unwrap(), *r);
}

#[test]
fn golden_postcard_full_request() {
    golden_request(
        &full_request(),
        "01
         01 02 7231
         01 09 3134202b203136203d
         00
         01 04 74696e79
         01 20
         01 0000003f
         01 28
         01 0000403f
         00
         01 0000803f
         01 ac02
         01 01 01 0a
         01 01
         01 10 6c6c616d616275732f7265706c792f78
         01 8827",
    );
}

#[test]
fn golden_postcard_chat_request() {
    golden_request(
        &chat_request(),
        "01
         00
         00
         01 02 06 73797374656d 09 4265206272696566 2e
               04 75736572 02 4869
         00 00 00 00 00 00 00 00 00 00 00 00",
    );
}

/// The postcard bytes of `reply(done)` up to its last field, `done`.
const REPLY_BEFORE_DONE_HEX: &str = "
    01 00
    01 02 7231
    04 74696e79
    02 3330
    00
    07 02
    000000000000e03f 0000000000802840 0000000000004440 0000000000004940";

#[test]
fn golden_postcard_reply() {
    golden_response(
        &Response::Reply(reply(None)),
        &format!("{REPLY_BEFORE_DONE_HEX} 00"),
    );
}

#[test]
fn golden_postcard_streamed_final_reply() {
    // The same reply with `done: Some(true)`: only the last field differs.
    golden_response(
        &Response::Reply(reply(Some(true))),
        &format!("{REPLY_BEFORE_DONE_HEX} 01 01"),
    );
}

#[test]
fn golden_postcard_chunk() {
    golden_response(
        &Response::Chunk(chunk()),
        "01 01
         01 02 7231
         03
         05 2033e282ac",
    );
}

#[test]
fn golden_postcard_error() {
    golden_response(
        &Response::Error(error_reply()),
        "01 02
         01 02 7231
         02 0d 717565756520697320 66756c6c",
    );
}

#[test]
fn postcard_error_codes_and_finish_reasons_keep_their_indices() {
    for (i, code) in ErrorCode::ALL.into_iter().enumerate() {
        let r = Response::Error(ErrorReply {
            id: None,
            error: ErrorBody {
                code,
                message: String::new(),
            },
        });
        assert_eq!(
            encode_response(&r, Encoding::Postcard),
            vec![WIRE_VERSION, 2, 0, i as u8, 0],
            "{code}"
        );
    }
    for (i, reason) in [
        FinishReason::Stop,
        FinishReason::Length,
        FinishReason::Cancelled,
    ]
    .into_iter()
    .enumerate()
    {
        let r = Reply {
            finish_reason: reason,
            ..Reply::default()
        };
        let bytes = encode_response(&Response::Reply(r), Encoding::Postcard);
        // version, variant, id None, model "", text "", finish_reason
        assert_eq!(bytes[5], i as u8);
    }
}

#[test]
fn postcard_round_trips_defaults_and_every_field() {
    let mut r = full_request();
    r.min_p = Some(0.05);
    r.prompt = None;
    r.messages = chat_request().messages;
    let bytes = encode_request_postcard(&r);
    assert_eq!(decode_request(&bytes, Encoding::Postcard).unwrap(), r);
    for resp in [
        Response::Reply(Reply::default()),
        Response::Chunk(Chunk::default()),
    ] {
        let bytes = encode_response(&resp, Encoding::Postcard);
        assert_eq!(decode_response(&bytes, Encoding::Postcard).unwrap(), resp);
    }
}

/// `format` came after version 1 as the last field: a request without one keeps version 1's
/// bytes (every golden request above), one with a name or an inline format appends it.
#[test]
fn golden_postcard_request_with_a_format() {
    let mut r = Request::from_prompt("hi");
    r.format = Some(FormatRef::Named("light".into()));
    golden_request(
        &r,
        "01 00 01 02 6869 00 00 00 00 00 00 00 00 00 00 00 00 00
         01 00 05 6c69676874",
    );
    r.format = Some(FormatRef::Inline(r#"{"type":"json"}"#.into()));
    golden_request(
        &r,
        "01 00 01 02 6869 00 00 00 00 00 00 00 00 00 00 00 00 00
         01 01 0f 7b2274797065223a226a736f6e227d",
    );
}

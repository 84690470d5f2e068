//! Text mode: the bare prompt in, bare text out, errors with the `error:` prefix.

use crate::fixtures::{chat_request, chunk, full_request, reply};
use llamabus::mqtt::wire::*;

#[test]
fn text_prompt_keeps_whitespace_but_drops_one_trailing_newline() {
    let p = |b: &[u8]| decode_request(b, Encoding::Text).unwrap().prompt.unwrap();
    assert_eq!(p(b"14 + 16 ="), "14 + 16 =");
    assert_eq!(p(b"14 + 16 = "), "14 + 16 = ");
    assert_eq!(p(b"14 + 16 =\n"), "14 + 16 =");
    assert_eq!(p(b"14 + 16 =\r\n"), "14 + 16 =");
    assert_eq!(p(b"a\n\n"), "a\n");
    assert_eq!(p(b"  {x}  "), "  {x}  ");
    let r = decode_request("日本語".as_bytes(), Encoding::Text).unwrap();
    assert_eq!(r, Request::from_prompt("日本語"));
}

#[test]
fn text_error_starts_with_error_prefix() {
    for code in ErrorCode::ALL {
        let r = Response::Error(ErrorReply {
            id: Some("x".into()),
            error: ErrorBody {
                code,
                message: "something went wrong".into(),
            },
        });
        let text = String::from_utf8(encode_response(&r, Encoding::Text)).unwrap();
        assert!(text.starts_with("error: "), "{text}");
        assert_eq!(text, format!("error: {code}: something went wrong"));
        let back = decode_response(text.as_bytes(), Encoding::Text).unwrap();
        let Response::Error(back) = back else {
            panic!("{back:?}")
        };
        assert_eq!(back.error.code, code);
        assert_eq!(back.error.message, "something went wrong");
    }
}

#[test]
fn text_reply_and_chunk_are_the_bare_text() {
    assert_eq!(
        encode_response(&Response::Reply(reply(None)), Encoding::Text),
        b"30"
    );
    assert_eq!(
        encode_response(&Response::Chunk(chunk()), Encoding::Text),
        " 3€".as_bytes()
    );
    let back = decode_response(b"30", Encoding::Text).unwrap();
    assert_eq!(
        back,
        Response::Reply(Reply {
            text: "30".into(),
            ..Reply::default()
        })
    );
}

#[test]
fn text_request_encoding_carries_only_a_prompt() {
    assert_eq!(
        encode_request(&Request::from_prompt("hi"), Encoding::Text).unwrap(),
        b"hi"
    );
    let e = encode_request(&full_request(), Encoding::Text).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(encode_request(&chat_request(), Encoding::Text).is_err());
}

#[test]
fn wire_error_display_and_reply() {
    let e = WireError::bad_request("`prompt` is empty");
    assert_eq!(e.to_string(), "bad_request: `prompt` is empty");
    let reply = e.to_reply(Some("id9".into()));
    assert_eq!(
        encode_response(&Response::Error(reply), Encoding::Json),
        br#"{"id":"id9","error":{"code":"bad_request","message":"`prompt` is empty"}}"#
    );
}

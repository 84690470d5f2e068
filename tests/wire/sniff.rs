//! Sniffing the encoding from the content type or the payload.

use llamabus::mqtt::wire::*;

#[test]
fn sniff_by_content_type() {
    assert_eq!(sniff(b"hello", Some("application/json")), Encoding::Json);
    assert_eq!(
        sniff(b"hello", Some("Application/JSON; charset=utf-8")),
        Encoding::Json
    );
    assert_eq!(
        sniff(b"{", Some("application/postcard")),
        Encoding::Postcard
    );
    assert_eq!(sniff(b"{\"a\":1}", Some("text/plain")), Encoding::Text);
    assert_eq!(
        sniff(b"{x}", Some("text/plain; charset=utf-8")),
        Encoding::Text
    );
}

#[test]
fn sniff_by_payload() {
    assert_eq!(sniff(b"{\"prompt\":\"hi\"}", None), Encoding::Json);
    assert_eq!(sniff(b" \r\n\t{", None), Encoding::Json);
    assert_eq!(sniff(b"14 + 16 =", None), Encoding::Text);
    assert_eq!(sniff(b"[1,2]", None), Encoding::Text);
    assert_eq!(sniff(b"", None), Encoding::Text);
    assert_eq!(sniff(b"\x01\x00", None), Encoding::Text);
    // Unknown content types fall back to the payload; postcard is never guessed.
    assert_eq!(
        sniff(b"{}", Some("application/octet-stream")),
        Encoding::Json
    );
    assert_eq!(
        sniff(&encode_request_postcard(&Request::from_prompt("hi")), None),
        Encoding::Text
    );
}

#[test]
fn encoding_content_types_sniff_back() {
    for enc in [Encoding::Text, Encoding::Json, Encoding::Postcard] {
        assert_eq!(sniff(b"{", Some(enc.content_type())), enc);
    }
}

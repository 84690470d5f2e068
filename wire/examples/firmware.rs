//! What device firmware does with `llamabus-wire`: build a request, encode it as postcard for
//! `{prefix}/pc/prompt/{device}`, and decode what comes back on `{prefix}/reply/{device}`.
//!
//! Only the `no_std` API is used (`core` + `alloc`), so the same calls work on a
//! microcontroller between the MQTT client's publish and its message callback; this example
//! runs on the host: `cargo run -p llamabus-wire --example firmware`.

use llamabus_wire::{
    decode_response_postcard, encode_request_postcard, encode_response_postcard, Chunk,
    FinishReason, FormatRef, Reply, Request, Response, Usage,
};

fn main() {
    // 1. The request: a prompt, an id to match the replies, a small token budget, a stream.
    let request = Request {
        id: Some("kitchen-1".into()),
        max_tokens: Some(16),
        stream: Some(true),
        ..Request::from_prompt("Turn the kitchen light on?")
    };
    // The daemon checks the same rules; checking first saves a round trip.
    request.validate().expect("a valid request");
    let payload = encode_request_postcard(&request);
    println!(
        "publish {} bytes to llamabus/pc/prompt/kitchen",
        payload.len()
    );

    // A structured answer costs only the name of a format from the daemon's configuration
    // (`[formats.light]`); the reply's `text` is then JSON that follows it.
    let structured = Request {
        format: Some(FormatRef::Named("light".into())),
        ..Request::from_prompt("kitchen off")
    };
    structured.validate().expect("a valid request");
    println!(
        "publish {} bytes to llamabus/pc/prompt/kitchen for a `light` answer",
        encode_request_postcard(&structured).len()
    );

    // 2. What the daemon publishes back (built here with the same crate, as the daemon does):
    //    numbered chunks, then the final reply with `done`.
    let incoming = [
        encode_response_postcard(&Response::Chunk(Chunk {
            id: Some("kitchen-1".into()),
            seq: 0,
            delta: "Yes, ".into(),
        })),
        encode_response_postcard(&Response::Reply(Reply {
            id: Some("kitchen-1".into()),
            model: "smollm2".into(),
            text: "Yes, turning it on.".into(),
            finish_reason: FinishReason::Stop,
            usage: Usage {
                prompt_tokens: 12,
                completion_tokens: 6,
            },
            done: Some(true),
            ..Reply::default()
        })),
    ];

    // 3. The firmware's message callback: decode, then act on each kind of response.
    for bytes in &incoming {
        match decode_response_postcard(bytes) {
            Ok(Response::Chunk(c)) => println!("chunk {}: {:?}", c.seq, c.delta),
            Ok(Response::Reply(r)) => println!(
                "reply ({}, {} tokens): {:?}",
                r.finish_reason.as_str(),
                r.usage.completion_tokens,
                r.text
            ),
            Ok(Response::Error(e)) => println!("error {}: {}", e.error.code, e.error.message),
            // A payload from a newer protocol version, or corrupted: name it and drop it.
            Err(e) => println!("undecodable reply: {e}"),
        }
    }
}

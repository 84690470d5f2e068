//! Sample messages the tests encode, decode and compare.

use llamabus::mqtt::wire::*;

pub fn full_request() -> Request {
    Request {
        id: Some("r1".into()),
        prompt: Some("14 + 16 =".into()),
        messages: None,
        model: Some("tiny".into()),
        max_tokens: Some(32),
        temperature: Some(0.5),
        top_k: Some(40),
        top_p: Some(0.75),
        min_p: None,
        repeat_penalty: Some(1.0),
        seed: Some(300),
        stop: Some(vec!["\n".into()]),
        stream: Some(true),
        reply_to: Some("llamabus/reply/x".into()),
        deadline_ms: Some(5000),
        format: None,
    }
}

pub fn chat_request() -> Request {
    Request {
        messages: Some(vec![
            Message {
                role: "system".into(),
                content: "Be brief.".into(),
            },
            Message {
                role: "user".into(),
                content: "Hi".into(),
            },
        ]),
        ..Request::default()
    }
}

pub fn reply(done: Option<bool>) -> Reply {
    Reply {
        id: Some("r1".into()),
        model: "tiny".into(),
        text: "30".into(),
        finish_reason: FinishReason::Stop,
        usage: Usage {
            prompt_tokens: 7,
            completion_tokens: 2,
        },
        timings: Timings {
            queue_ms: 0.5,
            prompt_ms: 12.25,
            generate_ms: 40.0,
            tokens_per_s: 50.0,
        },
        done,
        json: None,
        message: None,
    }
}

pub fn chunk() -> Chunk {
    Chunk {
        id: Some("r1".into()),
        seq: 3,
        delta: " 3€".into(),
    }
}

pub fn error_reply() -> ErrorReply {
    ErrorReply {
        id: Some("r1".into()),
        error: ErrorBody {
            code: ErrorCode::Busy,
            message: "queue is full".into(),
        },
    }
}

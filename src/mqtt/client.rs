//! `llamabus ask`: one MQTT 5 request/response round trip.
//!
//! Subscribes to a private reply topic `{prefix}/reply/ask-<random>` first, then publishes the
//! prompt to `{prefix}/prompt/{device}` with that Response Topic and random Correlation Data,
//! and prints the answer as it arrives. Plain text is sent unless JSON is needed (`--json`,
//! `--stream`, `--format`, or a generation option); JSON requests carry the prompt as one user
//! message. `--format` is parsed as `complete --format` parses it ([`FormatArg`]): a name goes
//! as `"format": "NAME"`, `json` and `@file` as the inline format; the daemon compiles either.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};

use crate::format::FormatArg;
use crate::mqtt::conn;
use crate::mqtt::settings::BrokerUrl;
use crate::mqtt::topics::Topics;
use crate::mqtt::wire::{self, Encoding, FormatRef, Message, Request, Response};

/// What to ask.
#[derive(Clone, Debug)]
pub struct AskOptions {
    pub broker: BrokerUrl,
    pub prefix: String,
    pub device: String,
    /// Send JSON and print every JSON message received, one per line.
    pub json: bool,
    /// Ask for a streamed answer (implies a JSON request).
    pub stream: bool,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    /// The format the answer must follow.
    pub format: Option<FormatArg>,
    pub timeout: Duration,
    pub max_packet_bytes: u32,
    /// Print where the time went to stderr: publish → first token and → last token as seen
    /// here, next to the daemon's own queue/prompt/generation times from the reply.
    pub timings: bool,
    pub prompt: String,
}

/// Client-side clock of one request, for `--timings`.
#[derive(Debug, Default)]
struct Stopwatch {
    published: Option<Instant>,
    first_token: Option<Instant>,
}

impl Stopwatch {
    fn ms_since_publish(&self, t: Instant) -> f64 {
        self.published
            .map_or(0.0, |p| t.duration_since(p).as_secs_f64() * 1e3)
    }

    /// One line: client-observed latencies, the daemon's share, and what remains (broker
    /// round trips, JSON, routing) — the MQTT overhead.
    fn report(&self, r: &wire::Reply) -> String {
        let now = Instant::now();
        let last = self.ms_since_publish(now);
        let first = self.ms_since_publish(self.first_token.unwrap_or(now));
        let t = &r.timings;
        let daemon = t.queue_ms + t.prompt_ms + t.generate_ms;
        let overhead = last - daemon;
        format!(
            "timings: publish->first token {first:.1} ms, publish->last token {last:.1} ms, \
             {} tokens | daemon: queue {:.1} ms, prompt {:.1} ms, generate {:.1} ms \
             ({:.1} tok/s) | outside the engine {overhead:.1} ms ({:.1}%)",
            r.usage.completion_tokens,
            t.queue_ms,
            t.prompt_ms,
            t.generate_ms,
            t.tokens_per_s,
            if last > 0.0 {
                100.0 * overhead / last
            } else {
                0.0
            },
        )
    }
}

/// Why `ask` did not print an answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("{code}: {message}")]
    ErrorReply { code: String, message: String },
    #[error("no answer on {topic} within {timeout:?}")]
    Timeout { topic: String, timeout: Duration },
    #[error("connection to {broker}: {error}")]
    Connection {
        broker: String,
        error: rumqttc::v5::ConnectionError,
    },
    #[error("mqtt client: {0}")]
    Client(Box<rumqttc::v5::ClientError>),
    #[error("the answer is not valid: {0}")]
    Incomplete(String),
    #[error("undecodable reply on {topic}: {message}")]
    BadReply { topic: String, message: String },
    #[error(transparent)]
    Tls(#[from] conn::TlsError),
    #[error("writing the answer: {0}")]
    Io(#[from] std::io::Error),
}

impl From<rumqttc::v5::ClientError> for AskError {
    fn from(e: rumqttc::v5::ClientError) -> AskError {
        AskError::Client(Box::new(e))
    }
}

/// Sends the request and writes the answer to `out` (text, or JSON lines with `json`).
pub async fn ask(o: &AskOptions, out: &mut dyn Write) -> Result<(), AskError> {
    let topics = Topics::new(&o.prefix, None);
    let nonce = conn::random_hex(6);
    let reply_topic = topics.reply(&format!("ask-{nonce}"));
    let correlation = Bytes::from(conn::random_hex(8).into_bytes());
    let use_json = o.json
        || o.stream
        || o.max_tokens.is_some()
        || o.temperature.is_some()
        || o.format.is_some();
    let (enc, payload) = if use_json {
        let req = Request {
            id: Some(format!("ask-{nonce}")),
            messages: Some(vec![Message {
                role: "user".into(),
                content: o.prompt.clone(),
            }]),
            max_tokens: o.max_tokens,
            temperature: o.temperature,
            stream: o.stream.then_some(true),
            format: o.format.as_ref().map(format_ref),
            ..Request::default()
        };
        let p = wire::encode_request(&req, Encoding::Json).map_err(|e| AskError::BadReply {
            topic: topics.prompt(&o.device),
            message: e.to_string(),
        })?;
        (Encoding::Json, p)
    } else {
        (Encoding::Text, o.prompt.clone().into_bytes())
    };

    let options = conn::client_options(
        &format!("llamabus-ask-{nonce}"),
        &o.broker,
        o.max_packet_bytes,
    )?;
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let broker = o.broker.to_string();
    let mut clock = Stopwatch::default();
    let work = async {
        let mut sent = false;
        loop {
            let ev = eventloop
                .poll()
                .await
                .map_err(|error| AskError::Connection {
                    broker: broker.clone(),
                    error,
                })?;
            match ev {
                Event::Incoming(Packet::ConnAck(_)) => {
                    client.try_subscribe(reply_topic.clone(), QoS::AtLeastOnce)?;
                }
                Event::Incoming(Packet::SubAck(_)) if !sent => {
                    sent = true;
                    let props = PublishProperties {
                        response_topic: Some(reply_topic.clone()),
                        correlation_data: Some(correlation.clone()),
                        content_type: Some(enc.content_type().to_owned()),
                        payload_format_indicator: Some(1),
                        ..PublishProperties::default()
                    };
                    client.try_publish_with_properties(
                        topics.prompt(&o.device),
                        QoS::AtLeastOnce,
                        false,
                        payload.clone(),
                        props,
                    )?;
                    clock.published = Some(Instant::now());
                }
                Event::Incoming(Packet::Publish(p)) => {
                    if p.topic != reply_topic.as_bytes() {
                        continue;
                    }
                    let corr = p
                        .properties
                        .as_ref()
                        .and_then(|x| x.correlation_data.as_ref());
                    if corr != Some(&correlation) {
                        continue;
                    }
                    if handle_reply(o, enc, &p.payload, &reply_topic, out, &mut clock)? {
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
    };
    let result = match tokio::time::timeout(o.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(AskError::Timeout {
            topic: reply_topic.clone(),
            timeout: o.timeout,
        }),
    };
    // Best effort: a clean DISCONNECT, so the broker does not wait for keep-alive.
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(ev) = eventloop.poll().await {
            if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    result
}

/// A `--format` as the request's `format` field.
fn format_ref(arg: &FormatArg) -> FormatRef {
    match arg {
        FormatArg::Named(name) => FormatRef::Named(name.clone()),
        FormatArg::Spec(spec) => FormatRef::Inline(
            serde_json::to_string(spec).expect("a format spec serializes to JSON"),
        ),
    }
}

/// Handles one reply message; `Ok(true)` once the answer is complete.
fn handle_reply(
    o: &AskOptions,
    enc: Encoding,
    payload: &[u8],
    topic: &str,
    out: &mut dyn Write,
    clock: &mut Stopwatch,
) -> Result<bool, AskError> {
    let resp = wire::decode_response(payload, enc).map_err(|e| AskError::BadReply {
        topic: topic.to_owned(),
        message: e.to_string(),
    })?;
    if o.json {
        out.write_all(payload)?;
        out.write_all(b"\n")?;
        out.flush()?;
    }
    match resp {
        Response::Chunk(c) => {
            if clock.first_token.is_none() && !c.delta.is_empty() {
                clock.first_token = Some(Instant::now());
            }
            if !o.json {
                out.write_all(c.delta.as_bytes())?;
                out.flush()?;
            }
            Ok(false)
        }
        Response::Reply(r) => {
            if !o.json {
                if !o.stream {
                    out.write_all(r.text.as_bytes())?;
                }
                out.write_all(b"\n")?;
                out.flush()?;
            }
            if o.timings {
                eprintln!("{}", clock.report(&r));
            }
            match r.message {
                // A formatted answer cut short: printed, but not presented as valid.
                Some(why) => Err(AskError::Incomplete(why)),
                None => Ok(true),
            }
        }
        Response::Error(e) => Err(AskError::ErrorReply {
            code: e.error.code.to_string(),
            message: e.error.message,
        }),
    }
}

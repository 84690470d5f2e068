//! The messages between the event loop, the engine and the publisher, and the reply
//! properties they carry.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::oneshot;

use crate::engine::{ErrorKind, JobEvent};
use crate::mqtt::dedup;
use crate::mqtt::wire::{self, Encoding, ErrorCode};
use crate::sampler;

/// Room kept in every packet for the fixed header, topic, packet id and properties.
const PACKET_OVERHEAD: usize = 64;

/// Request id → its cancel flag, keyed by (device, id).
pub(super) type Cancels = Arc<Mutex<HashMap<(String, String), (u64, Arc<AtomicBool>)>>>;

/// A publish to make.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub(super) topic: String,
    pub(super) qos: QoS,
    pub(super) retain: bool,
    pub(super) payload: Vec<u8>,
    pub(super) props: PublishProperties,
}

/// The acknowledgement a QoS 1 request is owed: its packet id, on the connection it arrived on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ack {
    pub(super) qos: QoS,
    pub(super) pkid: u16,
    /// The connection (counted by [`Loop::handle`]) that delivered it. After a reconnect the
    /// packet id may name another message, so a stale ack is not sent: the broker redelivers
    /// the request in the resumed session, and the redelivery is acked instead.
    pub(super) epoch: u64,
}

/// Where and how to answer one job.
#[derive(Debug)]
pub(super) struct Route {
    /// The device level of the request topic (for logs).
    pub(super) device: String,
    pub(super) topic: String,
    pub(super) qos: QoS,
    pub(super) enc: Encoding,
    pub(super) id: Option<String>,
    pub(super) correlation: Option<Bytes>,
    pub(super) stream: bool,
    pub(super) next_seq: u32,
    pub(super) cancel_key: Option<(String, String)>,
    /// Sent once the final reply is out: the request's, and those of duplicates merged in.
    pub(super) acks: Vec<Ack>,
    /// `(device, id)` in the dedup window while the job runs.
    pub(super) dedup_key: Option<dedup::Key>,
    /// A Home Assistant "Ask" request: answered on the answer sensor's topics.
    pub(super) ha: bool,
}

pub(super) enum Msg {
    /// Registers a job's route; always sent before the job is submitted.
    Route(u64, Route),
    /// An engine event of a routed job.
    Event(u64, JobEvent),
    Publish(Outgoing),
    /// Acknowledges requests whose replies were sent before this message.
    Ack(Vec<Ack>),
    /// A duplicate of a running job: acknowledged when the job's reply is out.
    Merge(u64, Ack),
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
    /// Answered once everything sent before it was handed to rumqttc.
    Flush(oneshot::Sender<()>),
}

pub(super) fn error_code(kind: ErrorKind) -> ErrorCode {
    match kind {
        ErrorKind::BadRequest => ErrorCode::BadRequest,
        ErrorKind::TooLong => ErrorCode::TooLong,
        ErrorKind::Busy => ErrorCode::Busy,
        ErrorKind::Expired => ErrorCode::Expired,
        ErrorKind::Cancelled => ErrorCode::Cancelled,
        ErrorKind::Internal => ErrorCode::Internal,
        ErrorKind::BadFormat => ErrorCode::BadFormat,
    }
}

pub(super) fn finish_reason(r: sampler::FinishReason) -> wire::FinishReason {
    match r {
        sampler::FinishReason::Stop => wire::FinishReason::Stop,
        sampler::FinishReason::Length => wire::FinishReason::Length,
        sampler::FinishReason::Cancelled => wire::FinishReason::Cancelled,
    }
}

pub(super) fn props(enc: Encoding, correlation: Option<Bytes>) -> PublishProperties {
    PublishProperties {
        // 1: the payload is UTF-8 (text and JSON); postcard is binary.
        payload_format_indicator: (enc != Encoding::Postcard).then_some(1),
        content_type: Some(enc.content_type().to_owned()),
        correlation_data: correlation,
        ..PublishProperties::default()
    }
}

pub(super) fn json_props(correlation: Option<Bytes>) -> PublishProperties {
    props(Encoding::Json, correlation)
}

/// Bytes of payload that fit one packet to `topic` with `correlation`.
pub(super) fn payload_budget(
    limit: u32,
    topic: &str,
    correlation: Option<&Bytes>,
    enc: Encoding,
) -> usize {
    let overhead = PACKET_OVERHEAD
        + topic.len()
        + correlation.map_or(0, |c| c.len())
        + enc.content_type().len();
    (limit as usize).saturating_sub(overhead)
}

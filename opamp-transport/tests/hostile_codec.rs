//! Hostile bytes against the codecs: protobuf with the wrong wire types and
//! protobuf nested far past any sane depth, as WebSocket frames and as
//! plain-HTTP bodies. Each is a typed error (and a 400), never a panic or a
//! stack overflow.

use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::Full;
use opamp_proto::{AgentToServer, AnyValue, Message, ServerToAgent, any_value};
use opamp_transport::http::server::{ReadError, read_agent_message};
use opamp_transport::{FrameError, HeaderlessFrames, decode_frame};

const LIMIT: usize = 64 << 20;

fn headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    headers
}

async fn read_body(body: Vec<u8>) -> Result<AgentToServer, ReadError> {
    read_agent_message(
        Full::new(Bytes::from(body)),
        &headers(),
        LIMIT,
        Duration::from_secs(10),
    )
    .await
}

fn framed(body: &[u8]) -> Bytes {
    let mut frame = vec![0x00];
    frame.extend_from_slice(body);
    Bytes::from(frame)
}

fn push_varint(out: &mut Vec<u8>, value: usize) {
    prost::encoding::encode_varint(value as u64, out);
}

fn varint_len(value: usize) -> usize {
    prost::encoding::encoded_len_varint(value as u64)
}

/// An `AgentToServer` whose agent description holds one attribute whose
/// value is an `AnyValue` array nested `depth` times around a string.
///
/// Written outside-in from precomputed lengths, so building a million
/// levels costs linear time and no recursion.
fn nested_any_value_report(depth: usize) -> Vec<u8> {
    const INNER: [u8; 3] = [0x0a, 0x01, b'x']; // AnyValue { string_value: "x" }
    // any[i]: encoded length of the AnyValue with i levels of arrays;
    // array[i]: of the ArrayValue inside it.
    let mut any = vec![INNER.len()];
    let mut array = vec![0];
    for level in 1..=depth {
        let inner = any[level - 1];
        let array_len = 1 + varint_len(inner) + inner;
        array.push(array_len);
        any.push(1 + varint_len(array_len) + array_len);
    }
    let value = any[depth];
    let key_value = 3 + 1 + varint_len(value) + value;
    let description = 1 + varint_len(key_value) + key_value;

    let mut out = Vec::with_capacity(description + 32);
    out.extend_from_slice(&[0x0a, 0x10]); // instance_uid: 16 bytes
    out.extend_from_slice(&[0x42; 16]);
    out.push(0x1a); // agent_description
    push_varint(&mut out, description);
    out.push(0x0a); // identifying_attributes: KeyValue
    push_varint(&mut out, key_value);
    out.extend_from_slice(&[0x0a, 0x01, b'k', 0x12]); // key "k", value
    push_varint(&mut out, value);
    for level in (1..=depth).rev() {
        out.push(0x2a); // AnyValue.array_value
        push_varint(&mut out, array[level]);
        out.push(0x0a); // ArrayValue.values
        push_varint(&mut out, any[level - 1]);
    }
    out.extend_from_slice(&INNER);
    out
}

fn nesting_of(message: &AgentToServer) -> usize {
    let attribute = &message
        .agent_description
        .as_ref()
        .unwrap()
        .identifying_attributes[0];
    let mut value = attribute.value.as_ref().unwrap();
    let mut depth = 0;
    while let Some(any_value::Value::ArrayValue(array)) = &value.value {
        depth += 1;
        value = &array.values[0];
    }
    assert_eq!(value, &AnyValue::string("x"));
    depth
}

/// The builder writes exactly what prost would, so the deep cases below
/// fail for their depth and nothing else.
#[test]
fn nested_builder_matches_prost_at_a_legal_depth() {
    let bytes = nested_any_value_report(20);
    let message = AgentToServer::decode(&bytes[..]).expect("20 levels are fine");
    assert_eq!(nesting_of(&message), 20);
    assert_eq!(message.encode_to_vec(), bytes);
}

/// prost stops at 100 levels of nesting: 200 000 levels of AnyValue are a
/// decode error, in a frame or a body, not a stack overflow.
#[tokio::test]
async fn deeply_nested_any_value_hits_the_recursion_limit() {
    // 40 array levels are 80 message levels plus 3: still under the limit.
    let legal = nested_any_value_report(40);
    let frame: AgentToServer =
        decode_frame(framed(&legal), LIMIT, HeaderlessFrames::Reject).expect("under the limit");
    assert_eq!(nesting_of(&frame), 40);

    for depth in [60, 1_000, 200_000] {
        let hostile = nested_any_value_report(depth);
        let error =
            decode_frame::<AgentToServer>(framed(&hostile), LIMIT, HeaderlessFrames::Reject)
                .unwrap_err();
        let FrameError::Decode(cause) = &error else {
            panic!("depth {depth}: {error:?}");
        };
        assert!(
            cause.to_string().contains("recursion limit"),
            "depth {depth}: {cause}"
        );
        let error = read_body(hostile).await.unwrap_err();
        assert!(matches!(error, ReadError::Decode(_)), "{error:?}");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }
}

/// Fields sent with a wire type their declaration does not have.
fn wrong_wire_types() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        // instance_uid (bytes, field 1) as a varint.
        ("bytes field as varint", vec![0x08, 0x01]),
        // sequence_num (uint64, field 2) as length-delimited.
        ("varint field as bytes", vec![0x12, 0x01, 0x07]),
        // agent_description (message, field 3) as a fixed64.
        (
            "message field as fixed64",
            vec![0x19, 1, 2, 3, 4, 5, 6, 7, 8],
        ),
        // capabilities (uint64, field 4) as a fixed32.
        ("varint field as fixed32", vec![0x25, 1, 2, 3, 4]),
        // A group start (wire type 3) that never ends.
        ("unterminated group", vec![0x0b, 0x08, 0x01]),
        // Wire types 6 and 7 do not exist.
        ("wire type 6", vec![0x0e, 0x00]),
        ("wire type 7", vec![0x0f, 0x00]),
    ]
}

#[tokio::test]
async fn wrong_wire_types_are_decode_errors() {
    for (case, body) in wrong_wire_types() {
        let error = decode_frame::<AgentToServer>(framed(&body), LIMIT, HeaderlessFrames::Reject)
            .unwrap_err();
        assert!(matches!(error, FrameError::Decode(_)), "{case}: {error:?}");
        // Same for the other direction's message type.
        assert!(
            decode_frame::<ServerToAgent>(framed(&body), LIMIT, HeaderlessFrames::Reject).is_err(),
            "{case}"
        );
        let error = read_body(body).await.unwrap_err();
        assert!(matches!(error, ReadError::Decode(_)), "{case}: {error:?}");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{case}");
    }
}

/// Length prefixes that promise more than the message holds, at every
/// level: a bytes field, a nested message, and a nested message whose own
/// field overruns it.
#[tokio::test]
async fn length_lying_fields_at_every_level_are_decode_errors() {
    let cases: [(&str, Vec<u8>); 3] = [
        (
            "bytes longer than the message",
            vec![0x0a, 0xff, 0xff, 0x03, 1, 2],
        ),
        (
            "sub-message longer than the message",
            vec![0x1a, 0x40, 0x0a, 0x00],
        ),
        // agent_description of 2 bytes holding a KeyValue that claims 5.
        (
            "field overrunning its sub-message",
            vec![0x1a, 0x02, 0x0a, 0x05, 0x0a, 0x01, b'k', 0x00, 0x00],
        ),
    ];
    for (case, body) in cases {
        let error = decode_frame::<AgentToServer>(framed(&body), LIMIT, HeaderlessFrames::Reject)
            .unwrap_err();
        assert!(matches!(error, FrameError::Decode(_)), "{case}: {error:?}");
        let error = read_body(body).await.unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{case}: {error}");
    }
}

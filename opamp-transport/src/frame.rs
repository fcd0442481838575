//! The OpAMP WebSocket message codec (WS-02..WS-08, AMB-14).
//!
//! Every binary WebSocket message is `header` + `data`: the header is a
//! protobuf varint that must be 0 (one `0x00` byte on the wire) and the data
//! is the protobuf encoding of one `AgentToServer` or `ServerToAgent`.
//!
//! ## Headerless legacy frames (AMB-14)
//!
//! Old agents and servers sent the protobuf bytes without the header.
//! Detection is unambiguous from the first byte: a header-carrying frame
//! starts with `0x00`, while a protobuf message never does (a first byte of
//! `0x00` would be a field tag with field number 0, which protobuf forbids).
//! [`HeaderlessFrames::Reject`] (the default) treats any frame whose first
//! byte is not `0x00` as malformed, as WS-04 recommends.
//! [`HeaderlessFrames::Accept`] decodes such a frame (and an empty frame) as a
//! whole protobuf message, like opamp-go does. Encoding always writes the
//! header.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

/// Default limit for one OpAMP message on the wire: 64 MiB (WS-08, HTTP-16).
///
/// For WebSocket it counts the header byte(s) plus the protobuf data; for
/// plain HTTP it counts the (decompressed) body.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// The header value defined by this protocol version (WS-03).
const HEADER_V0: u8 = 0x00;

/// Longest possible varint encoding of a u64.
const MAX_VARINT_LEN: usize = 10;

/// What to do with frames that lack the OpAMP header (AMB-14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeaderlessFrames {
    /// Frames not starting with `0x00` are malformed (WS-04). Default.
    #[default]
    Reject,
    /// Frames not starting with `0x00` are decoded as plain protobuf
    /// (legacy peers).
    Accept,
}

/// Why an OpAMP WebSocket message could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame was empty, so it has no header (only valid for legacy
    /// headerless frames, if accepted).
    #[error("empty WebSocket message: missing OpAMP header")]
    MissingHeader,
    /// The header decoded to a value other than 0 (WS-04).
    #[error("unsupported OpAMP WebSocket header value {0}")]
    NonZeroHeader(u64),
    /// The header is 0 but encoded with more than one byte (e.g. `80 00`);
    /// only the canonical single `0x00` byte is valid.
    #[error("overlong encoding of the OpAMP WebSocket header")]
    OverlongHeader,
    /// The header is not a valid varint: truncated, longer than 10 bytes or
    /// overflowing 64 bits.
    #[error("malformed OpAMP WebSocket header varint")]
    MalformedHeader,
    /// The message (header + data) exceeds the size limit (WS-08..12).
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of header + data in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The data is not a valid protobuf message of the expected type.
    #[error("undecodable protobuf payload: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Size in bytes of `message` once framed (header + data).
pub fn framed_len<M: Message>(message: &M) -> usize {
    1 + message.encoded_len()
}

/// Encodes `message` as one OpAMP WebSocket message: `0x00` + protobuf.
///
/// Fails with [`FrameError::TooLarge`] without encoding anything if header +
/// data would exceed `limit` (WS-11, WS-12).
pub fn encode_frame<M: Message>(message: &M, limit: usize) -> Result<Bytes, FrameError> {
    let size = framed_len(message);
    if size > limit {
        return Err(FrameError::TooLarge { size, limit });
    }
    let mut buf = BytesMut::with_capacity(size);
    buf.put_u8(HEADER_V0);
    // Cannot fail: the buffer has room for exactly `encoded_len` bytes.
    message.encode_raw(&mut buf);
    Ok(buf.freeze())
}

/// Decodes one OpAMP WebSocket message into `M`.
///
/// Checks, in order: size (`frame.len() > limit` → [`FrameError::TooLarge`],
/// WS-09/10), header (must be the single byte `0x00`, WS-04, unless
/// `headerless` accepts legacy frames), then the protobuf data (WS-05: data
/// is everything after the header; empty data is a valid empty message,
/// WS-06). Byte fields of the result share `frame`'s buffer (no copy).
pub fn decode_frame<M: Message + Default>(
    frame: Bytes,
    limit: usize,
    headerless: HeaderlessFrames,
) -> Result<M, FrameError> {
    if frame.len() > limit {
        return Err(FrameError::TooLarge {
            size: frame.len(),
            limit,
        });
    }
    let data = match frame.first() {
        Some(&HEADER_V0) => frame.slice(1..),
        _ if headerless == HeaderlessFrames::Accept => frame,
        None => return Err(FrameError::MissingHeader),
        Some(_) => return Err(classify_bad_header(&frame)),
    };
    Ok(M::decode(data)?)
}

/// Explains why a header not starting with `0x00` is invalid.
fn classify_bad_header(frame: &[u8]) -> FrameError {
    let mut value: u64 = 0;
    for (index, &byte) in frame.iter().take(MAX_VARINT_LEN).enumerate() {
        let bits = u64::from(byte & 0x7f);
        // The 10th byte may only contribute the top bit of a u64.
        if index == MAX_VARINT_LEN - 1 && bits > 1 {
            return FrameError::MalformedHeader;
        }
        value |= bits << (7 * index);
        if byte & 0x80 == 0 {
            return if value == 0 {
                FrameError::OverlongHeader
            } else {
                FrameError::NonZeroHeader(value)
            };
        }
    }
    // Ran out of bytes, or more than 10 continuation bytes.
    FrameError::MalformedHeader
}

/// Reads a varint header the way a generic decoder would; used by tests to
/// cross-check [`classify_bad_header`].
#[cfg(test)]
fn reference_varint(mut frame: &[u8]) -> Option<u64> {
    prost::encoding::decode_varint(&mut frame).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opamp_proto::{AgentToServer, ServerToAgent};
    use proptest::prelude::*;

    const LIMIT: usize = crate::DEFAULT_MAX_MESSAGE_SIZE;

    fn sample() -> AgentToServer {
        AgentToServer {
            instance_uid: Bytes::from_static(&[7; 16]),
            sequence_num: 42,
            capabilities: 0x1,
            ..Default::default()
        }
    }

    #[test]
    fn ws_03_encode_writes_single_zero_header() {
        let frame = encode_frame(&sample(), LIMIT).unwrap();
        assert_eq!(frame[0], 0x00);
        assert_eq!(&frame[1..], &sample().encode_to_vec()[..]);
        assert_eq!(frame.len(), framed_len(&sample()));
    }

    #[test]
    fn ws_05_roundtrip() {
        let frame = encode_frame(&sample(), LIMIT).unwrap();
        let back: AgentToServer = decode_frame(frame, LIMIT, HeaderlessFrames::Reject).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn ws_06_empty_data_is_valid_empty_message() {
        let frame = encode_frame(&ServerToAgent::default(), LIMIT).unwrap();
        assert_eq!(&frame[..], &[0x00]);
        let back: ServerToAgent = decode_frame(frame, LIMIT, HeaderlessFrames::Reject).unwrap();
        assert_eq!(back, ServerToAgent::default());
    }

    #[test]
    fn ws_04_non_zero_header_rejected() {
        let err = decode_frame::<AgentToServer>(
            Bytes::from_static(&[0x01, 0x08, 0x01]),
            LIMIT,
            HeaderlessFrames::Reject,
        )
        .unwrap_err();
        assert_eq!(err, FrameError::NonZeroHeader(1));
        // 300 = ac 02
        let err = decode_frame::<AgentToServer>(
            Bytes::from_static(&[0xac, 0x02]),
            LIMIT,
            HeaderlessFrames::Reject,
        )
        .unwrap_err();
        assert_eq!(err, FrameError::NonZeroHeader(300));
    }

    #[test]
    fn ws_04_overlong_zero_header_rejected() {
        for frame in [
            &[0x80, 0x00][..],
            &[0x80, 0x80, 0x00, 0x08],
            &[0x80; 9].iter().chain(&[0x00]).copied().collect::<Vec<_>>(),
        ] {
            let err = decode_frame::<AgentToServer>(
                Bytes::copy_from_slice(frame),
                LIMIT,
                HeaderlessFrames::Reject,
            )
            .unwrap_err();
            assert_eq!(err, FrameError::OverlongHeader, "{frame:?}");
        }
    }

    #[test]
    fn ws_02_ten_byte_and_longer_varints() {
        // u64::MAX takes exactly 10 bytes: valid varint, non-zero header.
        let mut max = Vec::new();
        prost::encoding::encode_varint(u64::MAX, &mut max);
        assert_eq!(max.len(), 10);
        assert_eq!(
            decode_frame::<AgentToServer>(Bytes::from(max), LIMIT, HeaderlessFrames::Reject)
                .unwrap_err(),
            FrameError::NonZeroHeader(u64::MAX)
        );
        // 10th byte overflowing 64 bits.
        let mut overflow = vec![0xff; 9];
        overflow.push(0x02);
        assert_eq!(
            decode_frame::<AgentToServer>(Bytes::from(overflow), LIMIT, HeaderlessFrames::Reject)
                .unwrap_err(),
            FrameError::MalformedHeader
        );
        // 11 bytes of continuation.
        assert_eq!(
            decode_frame::<AgentToServer>(
                Bytes::from(vec![0x80; 11]),
                LIMIT,
                HeaderlessFrames::Reject
            )
            .unwrap_err(),
            FrameError::MalformedHeader
        );
        // Truncated: continuation bit set on the last byte.
        assert_eq!(
            decode_frame::<AgentToServer>(
                Bytes::from_static(&[0x81]),
                LIMIT,
                HeaderlessFrames::Reject
            )
            .unwrap_err(),
            FrameError::MalformedHeader
        );
    }

    #[test]
    fn empty_frame_is_missing_header_when_strict() {
        assert_eq!(
            decode_frame::<AgentToServer>(Bytes::new(), LIMIT, HeaderlessFrames::Reject)
                .unwrap_err(),
            FrameError::MissingHeader
        );
        // Legacy mode: an empty frame is an empty headerless message.
        let msg: AgentToServer =
            decode_frame(Bytes::new(), LIMIT, HeaderlessFrames::Accept).unwrap();
        assert_eq!(msg, AgentToServer::default());
    }

    #[test]
    fn amb_14_headerless_legacy_frames() {
        let legacy = Bytes::from(sample().encode_to_vec());
        assert_ne!(legacy[0], 0x00, "a protobuf message never starts with 0x00");
        let err = decode_frame::<AgentToServer>(legacy.clone(), LIMIT, HeaderlessFrames::Reject)
            .unwrap_err();
        assert!(matches!(err, FrameError::NonZeroHeader(_)), "{err:?}");
        let back: AgentToServer = decode_frame(legacy, LIMIT, HeaderlessFrames::Accept).unwrap();
        assert_eq!(back, sample());
        // With a header, lenient mode still strips it.
        let framed = encode_frame(&sample(), LIMIT).unwrap();
        assert_eq!(
            decode_frame::<AgentToServer>(framed, LIMIT, HeaderlessFrames::Accept).unwrap(),
            sample()
        );
    }

    #[test]
    fn ws_12_outgoing_over_limit_is_not_encoded() {
        let msg = sample();
        let size = framed_len(&msg);
        assert!(
            encode_frame(&msg, size).is_ok(),
            "exactly at the limit is fine"
        );
        assert_eq!(
            encode_frame(&msg, size - 1).unwrap_err(),
            FrameError::TooLarge {
                size,
                limit: size - 1
            }
        );
    }

    #[test]
    fn ws_10_incoming_limit_counts_header_and_data() {
        let frame = encode_frame(&sample(), LIMIT).unwrap();
        let size = frame.len();
        assert!(
            decode_frame::<AgentToServer>(frame.clone(), size, HeaderlessFrames::Reject).is_ok()
        );
        assert_eq!(
            decode_frame::<AgentToServer>(frame, size - 1, HeaderlessFrames::Reject).unwrap_err(),
            FrameError::TooLarge {
                size,
                limit: size - 1
            }
        );
    }

    #[test]
    fn truncated_and_length_lying_protobuf_are_typed_errors() {
        let full = encode_frame(&sample(), LIMIT).unwrap();
        let truncated = full.slice(..full.len() - 3);
        assert!(matches!(
            decode_frame::<AgentToServer>(truncated, LIMIT, HeaderlessFrames::Reject),
            Err(FrameError::Decode(_))
        ));
        // Field 1 (bytes) claiming 1000 bytes with only 2 present.
        let lying = Bytes::from_static(&[0x00, 0x0a, 0xe8, 0x07, 0x01, 0x02]);
        assert!(matches!(
            decode_frame::<AgentToServer>(lying, LIMIT, HeaderlessFrames::Reject),
            Err(FrameError::Decode(_))
        ));
    }

    proptest! {
        #[test]
        fn roundtrip_any_message(seq in any::<u64>(), caps in any::<u64>(), uid in proptest::collection::vec(any::<u8>(), 0..32)) {
            let msg = AgentToServer { instance_uid: Bytes::from(uid), sequence_num: seq, capabilities: caps, ..Default::default() };
            let frame = encode_frame(&msg, LIMIT).unwrap();
            prop_assert_eq!(frame.len(), framed_len(&msg));
            let back: AgentToServer = decode_frame(frame, LIMIT, HeaderlessFrames::Reject).unwrap();
            prop_assert_eq!(back, msg);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64), lenient in any::<bool>()) {
            let mode = if lenient { HeaderlessFrames::Accept } else { HeaderlessFrames::Reject };
            let _ = decode_frame::<ServerToAgent>(Bytes::from(data.clone()), LIMIT, mode);
            let _ = decode_frame::<AgentToServer>(Bytes::from(data), 16, mode);
        }

        #[test]
        fn strict_mode_accepts_only_the_canonical_header(data in proptest::collection::vec(any::<u8>(), 1..32)) {
            let result = decode_frame::<AgentToServer>(Bytes::from(data.clone()), LIMIT, HeaderlessFrames::Reject);
            if data[0] != 0 {
                prop_assert!(result.is_err());
                // Classification agrees with a generic varint reader.
                match (result.unwrap_err(), reference_varint(&data)) {
                    (FrameError::NonZeroHeader(v), Some(r)) => prop_assert_eq!(v, r),
                    (FrameError::OverlongHeader, Some(0)) => {}
                    (FrameError::MalformedHeader, None) => {}
                    (other, r) => prop_assert!(false, "{other:?} vs reference {r:?}"),
                }
            }
        }

        #[test]
        fn size_limit_is_exact(len in 0usize..200, limit in 0usize..200) {
            let frame = Bytes::from(vec![0u8; len]);
            let result = decode_frame::<AgentToServer>(frame, limit, HeaderlessFrames::Reject);
            if len > limit {
                prop_assert_eq!(result.unwrap_err(), FrameError::TooLarge { size: len, limit });
            } else {
                let too_large = matches!(result, Err(FrameError::TooLarge { .. }));
                prop_assert!(!too_large, "unexpected TooLarge");
            }
        }
    }
}

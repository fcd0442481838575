//! `decode_frame` on arbitrary bytes, for both message types and both
//! headerless modes.

use bytes::Bytes;
use opamp_proto::{AgentToServer, Message, ServerToAgent};
use opamp_transport::{FrameError, HeaderlessFrames, decode_frame, encode_frame};

/// Limit used for the main decode; big enough for every fuzz input.
const LIMIT: usize = 1 << 20;

/// Decodes `data` as a WebSocket message every way there is and checks the
/// codec's promises: strict mode accepts only frames starting with `0x00`,
/// lenient mode agrees with strict mode on such frames, the size limit is
/// exact, and whatever decodes re-encodes to a frame that decodes to the same
/// bytes.
pub fn ws_frame(data: &[u8]) {
    check::<AgentToServer>(data);
    check::<ServerToAgent>(data);
}

fn check<M: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let frame = Bytes::copy_from_slice(data);
    let strict = decode_frame::<M>(frame.clone(), LIMIT, HeaderlessFrames::Reject);
    let lenient = decode_frame::<M>(frame.clone(), LIMIT, HeaderlessFrames::Accept);

    match data.first() {
        None => assert_eq!(strict, Err(FrameError::MissingHeader)),
        Some(0) => assert_eq!(
            encoded(&strict),
            encoded(&lenient),
            "both modes read a framed message the same way"
        ),
        Some(_) => assert!(
            !matches!(strict, Ok(_) | Err(FrameError::Decode(_))),
            "strict mode must reject a bad header before decoding: {strict:?}"
        ),
    }

    for decoded in [&strict, &lenient].into_iter().flatten() {
        // Whatever was accepted survives a round trip through the encoder.
        let reframed = encode_frame(decoded, usize::MAX).expect("no limit");
        let again: M = decode_frame(reframed.clone(), usize::MAX, HeaderlessFrames::Reject)
            .expect("own frames always decode");
        assert_eq!(again.encode_to_vec(), decoded.encode_to_vec());
        assert_eq!(reframed.len(), opamp_transport::framed_len(decoded));
    }

    // The limit counts every byte of the frame, and is checked first.
    if !data.is_empty() {
        let limit = data.len() - 1;
        assert_eq!(
            decode_frame::<M>(frame, limit, HeaderlessFrames::Reject),
            Err(FrameError::TooLarge {
                size: data.len(),
                limit
            })
        );
    }
}

fn encoded<M: Message>(result: &Result<M, FrameError>) -> Result<Vec<u8>, FrameError> {
    result
        .as_ref()
        .map(Message::encode_to_vec)
        .map_err(Clone::clone)
}

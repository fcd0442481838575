//! Plain-HTTP request bodies: `read_agent_message` over whole and chunked
//! bodies, with and without `Content-Encoding: gzip`, cross-checked against
//! `decode_gzip_body` and a plain protobuf decode.

use std::convert::Infallible;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http::header::{CONTENT_ENCODING, HeaderMap, HeaderValue};
use http_body_util::{Full, StreamBody};
use opamp_proto::{AgentToServer, Message};
use opamp_transport::http::server::{ReadError, decode_gzip_body, read_agent_message};

use crate::runtime;

/// Decompressed-size limit: small, so gzip bombs in the corpus reach it.
const LIMIT: usize = 64 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Input: one control byte, then the body.
///
/// Control bits: `0x01` send `Content-Encoding: gzip`; `0x02` gzip the
/// payload here first (so the fuzzer explores protobuf behind valid gzip);
/// bits `0xf0` pick a chunk size for a streamed body (0 = one chunk).
pub fn http_body(data: &[u8]) {
    let Some((&control, payload)) = data.split_first() else {
        return;
    };
    let gzip_header = control & 0x01 != 0;
    let body = if control & 0x02 != 0 {
        Bytes::from(gzip(payload))
    } else {
        Bytes::copy_from_slice(payload)
    };
    let chunk = usize::from(control >> 4) * 7;
    let mut headers = HeaderMap::new();
    if gzip_header {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }

    runtime::block_on(async {
        let whole =
            read_agent_message(Full::new(body.clone()), &headers, LIMIT, READ_TIMEOUT).await;
        if let Err(error) = &whole {
            let status = error.status();
            assert!(
                matches!(status.as_u16(), 400 | 413 | 415),
                "{error} answered with {status}"
            );
        }

        // Streaming the same bytes in small chunks changes nothing.
        if chunk > 0 {
            let chunks: Vec<Result<http_body::Frame<Bytes>, Infallible>> = body
                .chunks(chunk)
                .map(|piece| Ok(http_body::Frame::data(Bytes::copy_from_slice(piece))))
                .collect();
            let streamed = read_agent_message(
                StreamBody::new(futures_util::stream::iter(chunks)),
                &headers,
                LIMIT,
                READ_TIMEOUT,
            )
            .await;
            assert_eq!(summary(&whole), summary(&streamed), "chunked vs whole body");
        }

        match (gzip_header, control & 0x02 != 0) {
            // Identity: exactly a protobuf decode of the body.
            (false, _) => {
                let expected = if body.is_empty() {
                    None
                } else {
                    AgentToServer::decode(body.clone()).ok()
                };
                assert_eq!(
                    whole.as_ref().ok().map(Message::encode_to_vec),
                    expected.as_ref().map(Message::encode_to_vec)
                );
            }
            // Valid gzip around the payload: the same as sending it plain,
            // unless it is too large once inflated.
            (true, true) => {
                let plain = read_agent_message(
                    Full::new(Bytes::copy_from_slice(payload)),
                    &HeaderMap::new(),
                    LIMIT,
                    READ_TIMEOUT,
                )
                .await;
                if payload.len() > LIMIT {
                    assert!(
                        matches!(whole, Err(ReadError::TooLarge { .. })),
                        "{whole:?}"
                    );
                } else {
                    assert_eq!(summary(&whole), summary(&plain), "gzip vs plain");
                }
            }
            // Arbitrary bytes claimed as gzip: the one-shot helper agrees.
            (true, false) => {
                let oneshot = decode_gzip_body::<AgentToServer>(&body, LIMIT);
                match (&whole, &oneshot) {
                    (Ok(read), Ok(decoded)) => {
                        assert_eq!(read.encode_to_vec(), decoded.encode_to_vec());
                    }
                    // An empty inflated body is a 400 for the server only.
                    (Err(ReadError::EmptyBody), Ok(decoded)) => {
                        assert_eq!(decoded.encoded_len(), 0);
                    }
                    (Err(_), Err(_)) => {}
                    (read, decoded) => {
                        panic!("read_agent_message {read:?} vs decode_gzip_body {decoded:?}")
                    }
                }
            }
        }
    });
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(data).expect("writing to a Vec");
    encoder.finish().expect("writing to a Vec")
}

/// What matters about a result for comparisons: the message bytes or the
/// status.
fn summary(result: &Result<AgentToServer, ReadError>) -> Result<Vec<u8>, u16> {
    match result {
        Ok(message) => Ok(message.encode_to_vec()),
        Err(error) => Err(error.status().as_u16()),
    }
}

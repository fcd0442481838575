//! Message encoding costs: `encode`, `encoded_len`, `decode`, and the
//! transport round trips, for the four messages in `opamp_benches::messages`.
//! The 1 MiB case has a `memcpy` of the same bytes as its physical baseline.
#![allow(missing_docs)] // criterion_group! generates undocumented items.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use opamp_benches::messages;
use opamp_proto::{AgentToServer, Message, ServerToAgent};
use opamp_transport::http::encode_gzip_body;
use opamp_transport::http::server::decode_gzip_body;
use opamp_transport::{DEFAULT_MAX_MESSAGE_SIZE, HeaderlessFrames, decode_frame, encode_frame};

fn bench_message<M: Message + Default>(c: &mut Criterion, name: &str, message: &M) {
    let wire = Bytes::from(message.encode_to_vec());
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(wire.len() as u64));

    group.bench_function("encode", |b| {
        let mut buf = Vec::with_capacity(wire.len());
        b.iter(|| {
            buf.clear();
            black_box(message)
                .encode(&mut buf)
                .expect("capacity is unbounded");
            black_box(&buf);
        })
    });
    group.bench_function("encoded_len", |b| {
        b.iter(|| black_box(message).encoded_len())
    });
    group.bench_function("decode", |b| {
        b.iter(|| M::decode(black_box(wire.clone())).expect("valid message"))
    });
    group.bench_function("encode+decode", |b| {
        b.iter(|| {
            let bytes = Bytes::from(black_box(message).encode_to_vec());
            M::decode(bytes).expect("valid message")
        })
    });
    group.bench_function("ws_frame_round_trip", |b| {
        b.iter(|| {
            let frame = encode_frame(black_box(message), DEFAULT_MAX_MESSAGE_SIZE).expect("fits");
            decode_frame::<M>(frame, DEFAULT_MAX_MESSAGE_SIZE, HeaderlessFrames::Reject)
                .expect("valid frame")
        })
    });
    group.bench_function("gzip_http_body_round_trip", |b| {
        b.iter(|| {
            let body = encode_gzip_body(black_box(message));
            decode_gzip_body::<M>(&body, DEFAULT_MAX_MESSAGE_SIZE).expect("valid body")
        })
    });
    group.finish();
}

fn encoding(c: &mut Criterion) {
    bench_message::<AgentToServer>(c, "heartbeat", &messages::heartbeat());
    bench_message::<AgentToServer>(c, "full_status", &messages::full_status());
    bench_message::<ServerToAgent>(c, "remote_config_1mib", &messages::big_remote_config());
    bench_message::<ServerToAgent>(c, "packages_available", &messages::packages_available());
}

fn memcpy_baseline(c: &mut Criterion) {
    let source = messages::big_remote_config().encode_to_vec();
    let mut group = c.benchmark_group("remote_config_1mib");
    group.throughput(Throughput::Bytes(source.len() as u64));
    group.bench_with_input(
        BenchmarkId::new("memcpy", source.len()),
        &source,
        |b, source| {
            let mut dest = vec![0u8; source.len()];
            b.iter(|| {
                dest.copy_from_slice(black_box(source));
                black_box(&dest);
            })
        },
    );
    group.finish();
}

criterion_group!(benches, encoding, memcpy_baseline);
criterion_main!(benches);

//! Property tests: every message, with every field set, survives
//! encode → decode unchanged, and the encoding is deterministic.

use std::collections::BTreeMap;

use bytes::Bytes;
use opamp_proto::*;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._/-]{1,12}"
}

fn blob() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 1..48).prop_map(Bytes::from)
}

fn uid() -> impl Strategy<Value = Bytes> {
    any::<[u8; 16]>().prop_map(|b| Bytes::copy_from_slice(&b))
}

fn nonzero() -> impl Strategy<Value = u64> {
    1..u64::MAX
}

fn any_value() -> impl Strategy<Value = AnyValue> {
    let leaf = prop_oneof![
        text().prop_map(AnyValue::string),
        Just(AnyValue::bool(true)),
        any::<i64>().prop_map(AnyValue::int),
        // NaN never equals itself; finite values compare exactly.
        (-1e300f64..1e300).prop_map(AnyValue::double),
        blob().prop_map(AnyValue::bytes),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 1..4).prop_map(AnyValue::array),
            vec((text(), inner), 1..4).prop_map(|kvs| AnyValue::kvlist(
                kvs.into_iter().map(|(k, v)| KeyValue::new(k, v))
            )),
        ]
    })
}

fn key_values() -> impl Strategy<Value = Vec<KeyValue>> {
    vec(
        (text(), any_value()).prop_map(|(k, v)| KeyValue::new(k, v)),
        1..4,
    )
}

fn headers() -> impl Strategy<Value = Headers> {
    vec(
        (text(), text()).prop_map(|(key, value)| Header { key, value }),
        1..3,
    )
    .prop_map(|headers| Headers { headers })
}

fn certificate() -> impl Strategy<Value = TlsCertificate> {
    (blob(), blob(), blob()).prop_map(|(cert, private_key, ca_cert)| TlsCertificate {
        cert,
        private_key,
        ca_cert,
    })
}

fn tls() -> impl Strategy<Value = TlsConnectionSettings> {
    (text(), text(), text(), vec(text(), 1..3)).prop_map(|(ca, min, max, suites)| {
        TlsConnectionSettings {
            ca_pem_contents: ca,
            include_system_ca_certs_pool: true,
            insecure_skip_verify: true,
            min_version: min,
            max_version: max,
            cipher_suites: suites,
        }
    })
}

fn proxy() -> impl Strategy<Value = ProxyConnectionSettings> {
    (text(), headers()).prop_map(|(url, h)| ProxyConnectionSettings {
        url,
        connect_headers: Some(h),
    })
}

fn telemetry() -> impl Strategy<Value = TelemetryConnectionSettings> {
    (text(), headers(), certificate(), tls(), proxy()).prop_map(|(endpoint, h, c, t, p)| {
        TelemetryConnectionSettings {
            destination_endpoint: endpoint,
            headers: Some(h),
            certificate: Some(c),
            tls: Some(t),
            proxy: Some(p),
        }
    })
}

fn other_connection() -> impl Strategy<Value = OtherConnectionSettings> {
    (
        text(),
        headers(),
        certificate(),
        btree_map(text(), text(), 1..3),
        tls(),
        proxy(),
    )
        .prop_map(|(endpoint, h, c, other, t, p)| OtherConnectionSettings {
            destination_endpoint: endpoint,
            headers: Some(h),
            certificate: Some(c),
            other_settings: other,
            tls: Some(t),
            proxy: Some(p),
        })
}

fn connection_offers() -> impl Strategy<Value = ConnectionSettingsOffers> {
    (
        blob(),
        (text(), headers(), certificate(), nonzero(), tls(), proxy()),
        telemetry(),
        telemetry(),
        telemetry(),
        btree_map(text(), other_connection(), 1..3),
    )
        .prop_map(
            |(hash, (endpoint, h, c, hb, t, p), metrics, traces, logs, other)| {
                ConnectionSettingsOffers {
                    hash,
                    opamp: Some(OpAmpConnectionSettings {
                        destination_endpoint: endpoint,
                        headers: Some(h),
                        certificate: Some(c),
                        heartbeat_interval_seconds: hb,
                        tls: Some(t),
                        proxy: Some(p),
                    }),
                    own_metrics: Some(metrics),
                    own_traces: Some(traces),
                    own_logs: Some(logs),
                    other_connections: other,
                }
            },
        )
}

fn config_map() -> impl Strategy<Value = AgentConfigMap> {
    // Any key is valid in a map of any size, "" included (spec v0.20.0); the
    // role is optional.
    let key = prop_oneof![Just(String::new()), text()];
    let role = prop_oneof![Just(String::new()), text()];
    btree_map(
        key,
        (blob(), text(), role).prop_map(|(body, content_type, role)| AgentConfigObject {
            body,
            content_type,
            role,
        }),
        1..4,
    )
    .prop_map(|config_map| AgentConfigMap { config_map })
}

fn packages_available() -> impl Strategy<Value = PackagesAvailable> {
    let package = (text(), blob(), blob(), blob(), headers(), blob()).prop_map(
        |(version, url_hash, content_hash, signature, h, hash)| PackageAvailable {
            r#type: PackageType::Addon as i32,
            version,
            file: Some(DownloadableFile {
                download_url: format!("https://example.test/{}", hex(&url_hash)),
                content_hash,
                signature,
                headers: Some(h),
            }),
            hash,
        },
    );
    (btree_map(text(), package, 1..4), blob()).prop_map(|(packages, all_packages_hash)| {
        PackagesAvailable {
            packages,
            all_packages_hash,
        }
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn health() -> impl Strategy<Value = ComponentHealth> {
    let leaf = (text(), text(), nonzero(), nonzero(), key_values()).prop_map(
        |(last_error, status, start, at, attributes)| ComponentHealth {
            healthy: true,
            start_time_unix_nano: start,
            last_error,
            status,
            status_time_unix_nano: at,
            component_health_map: BTreeMap::new(),
            attributes,
        },
    );
    leaf.prop_recursive(2, 8, 3, |inner| {
        (inner.clone(), btree_map(text(), inner, 1..3)).prop_map(|(mut h, children)| {
            h.component_health_map = children;
            h
        })
    })
}

fn component_details() -> impl Strategy<Value = ComponentDetails> {
    let leaf = key_values().prop_map(|metadata| ComponentDetails {
        metadata,
        sub_component_map: BTreeMap::new(),
    });
    leaf.prop_recursive(2, 8, 3, |inner| {
        (key_values(), btree_map(text(), inner, 1..3)).prop_map(|(metadata, sub_component_map)| {
            ComponentDetails {
                metadata,
                sub_component_map,
            }
        })
    })
}

fn package_statuses() -> impl Strategy<Value = PackageStatuses> {
    let status = (
        text(),
        text(),
        blob(),
        text(),
        blob(),
        1i32..=4,
        text(),
        0.5f64..100.0,
        1.0f64..1e9,
    )
        .prop_map(
            |(name, has_v, has_h, off_v, off_h, st, err, pct, bps)| PackageStatus {
                name,
                agent_has_version: has_v,
                agent_has_hash: has_h,
                server_offered_version: off_v,
                server_offered_hash: off_h,
                status: st,
                error_message: err,
                download_details: Some(PackageDownloadDetails {
                    download_percent: pct,
                    download_bytes_per_second: bps,
                }),
            },
        );
    (btree_map(text(), status, 1..4), blob(), text()).prop_map(|(packages, hash, error_message)| {
        PackageStatuses {
            packages,
            server_provided_all_packages_hash: hash,
            error_message,
        }
    })
}

fn custom_capabilities() -> impl Strategy<Value = CustomCapabilities> {
    vec(text(), 1..3).prop_map(|capabilities| CustomCapabilities { capabilities })
}

fn custom_message() -> impl Strategy<Value = CustomMessage> {
    (text(), text(), blob()).prop_map(|(capability, r#type, data)| CustomMessage {
        capability,
        r#type,
        data,
    })
}

fn agent_to_server() -> impl Strategy<Value = AgentToServer> {
    (
        (
            uid(),
            nonzero(),
            key_values(),
            key_values(),
            nonzero(),
            health(),
        ),
        (
            config_map(),
            blob(),
            1i32..=3,
            text(),
            package_statuses(),
            nonzero(),
        ),
        (blob(), custom_capabilities(), custom_message()),
        (
            btree_map(text(), component_details(), 1..3),
            blob(),
            blob(),
            1i32..=3,
            text(),
        ),
    )
        .prop_map(
            |(
                (instance_uid, seq, ident, non_ident, caps, health),
                (effective, rc_hash, rc_status, rc_err, packages, flags),
                (csr, custom_capabilities, custom_message),
                (components, comp_hash, cs_hash, cs_status, cs_err),
            )| AgentToServer {
                instance_uid,
                sequence_num: seq,
                agent_description: Some(AgentDescription {
                    identifying_attributes: ident,
                    non_identifying_attributes: non_ident,
                }),
                capabilities: caps,
                health: Some(health),
                effective_config: Some(EffectiveConfig {
                    config_map: Some(effective),
                }),
                remote_config_status: Some(RemoteConfigStatus {
                    last_remote_config_hash: rc_hash,
                    status: rc_status,
                    error_message: rc_err,
                }),
                package_statuses: Some(packages),
                agent_disconnect: Some(AgentDisconnect {}),
                flags,
                connection_settings_request: Some(ConnectionSettingsRequest {
                    opamp: Some(OpAmpConnectionSettingsRequest {
                        certificate_request: Some(CertificateRequest { csr }),
                    }),
                }),
                custom_capabilities: Some(custom_capabilities),
                custom_message: Some(custom_message),
                available_components: Some(AvailableComponents {
                    components,
                    hash: comp_hash,
                }),
                connection_settings_status: Some(ConnectionSettingsStatus {
                    last_connection_settings_hash: cs_hash,
                    status: cs_status,
                    error_message: cs_err,
                }),
            },
        )
}

fn server_to_agent() -> impl Strategy<Value = ServerToAgent> {
    (
        (uid(), 1i32..=2, text(), nonzero(), config_map(), blob()),
        (
            connection_offers(),
            packages_available(),
            nonzero(),
            nonzero(),
            uid(),
        ),
        (custom_capabilities(), custom_message()),
    )
        .prop_map(
            |(
                (instance_uid, err_type, err_msg, retry_ns, config, config_hash),
                (offers, packages, flags, caps, new_uid),
                (custom_capabilities, custom_message),
            )| ServerToAgent {
                instance_uid,
                error_response: Some(ServerErrorResponse {
                    r#type: err_type,
                    error_message: err_msg,
                    details: Some(server_error_response::Details::RetryInfo(RetryInfo {
                        retry_after_nanoseconds: retry_ns,
                    })),
                }),
                remote_config: Some(AgentRemoteConfig {
                    config: Some(config),
                    config_hash,
                }),
                connection_settings: Some(offers),
                packages_available: Some(packages),
                flags,
                capabilities: caps,
                agent_identification: Some(AgentIdentification {
                    new_instance_uid: new_uid,
                }),
                command: Some(ServerToAgentCommand {
                    r#type: CommandType::Restart as i32,
                }),
                custom_capabilities: Some(custom_capabilities),
                custom_message: Some(custom_message),
            },
        )
}

fn assert_round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(message: &M) {
    let wire = message.encode_to_vec();
    assert_eq!(wire.len(), message.encoded_len());
    let decoded = M::decode(Bytes::from(wire.clone())).expect("decodes");
    assert_eq!(&decoded, message);
    // Deterministic: re-encoding gives the same bytes.
    assert_eq!(decoded.encode_to_vec(), wire);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn agent_to_server_round_trips_with_every_field_set(message in agent_to_server()) {
        assert_round_trip(&message);
        // Every top-level field is really on the wire: 15 distinct field numbers.
        prop_assert_eq!(distinct_field_numbers(&message), (1..=15).collect::<Vec<_>>());
    }

    #[test]
    fn server_to_agent_round_trips_with_every_field_set(message in server_to_agent()) {
        assert_round_trip(&message);
        prop_assert_eq!(distinct_field_numbers(&message), (1..=11).collect::<Vec<_>>());
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(data in vec(any::<u8>(), 0..256)) {
        let _ = AgentToServer::decode(data.as_slice());
        let _ = ServerToAgent::decode(data.as_slice());
    }
}

/// The top-level field numbers of `message` on the wire, in order, each once
/// (a repeated field's entries are adjacent).
fn distinct_field_numbers(message: &impl Message) -> Vec<u32> {
    let mut numbers = field_numbers(&message.encode_to_vec());
    numbers.dedup();
    numbers
}

/// Field numbers of the top-level fields, in wire order.
fn field_numbers(mut wire: &[u8]) -> Vec<u32> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let mut numbers = Vec::new();
    while !wire.is_empty() {
        let (number, wire_type) = decode_key(&mut wire).expect("key");
        numbers.push(number);
        match wire_type {
            WireType::Varint => {
                decode_varint(&mut wire).expect("varint");
            }
            WireType::SixtyFourBit => wire = &wire[8..],
            WireType::ThirtyTwoBit => wire = &wire[4..],
            WireType::LengthDelimited => {
                let len = decode_varint(&mut wire).expect("length") as usize;
                wire = &wire[len..];
            }
            other => panic!("unexpected wire type {other:?}"),
        }
    }
    numbers
}

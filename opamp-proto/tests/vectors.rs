//! The encoding test vectors from `shared/opamp/proto-facts.md` (made with
//! the Python protobuf runtime from the spec's `.proto` files): each decodes
//! to the documented value and re-encodes to the same bytes.

use bytes::Bytes;
use opamp_proto::*;

const UID: [u8; 16] = [
    0x01, 0x91, 0xe3, 0xa8, 0xc4, 0xb2, 0x7c, 0x3d, 0x8e, 0x9f, 0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f,
];

/// `0a 10 <uid>` followed by `rest` (hex, spaces allowed).
fn with_uid(rest: &str) -> Vec<u8> {
    let mut bytes = vec![0x0a, 0x10];
    bytes.extend_from_slice(&UID);
    bytes.extend(unhex(rest));
    bytes
}

fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text.replace(' ', "")).unwrap()
}

fn uid() -> Bytes {
    Bytes::copy_from_slice(&UID)
}

/// A message carrying the vector uid and nothing else.
fn agent_base() -> AgentToServer {
    AgentToServer {
        instance_uid: uid(),
        ..Default::default()
    }
}

/// A message carrying the vector uid and nothing else.
fn server_base() -> ServerToAgent {
    ServerToAgent {
        instance_uid: uid(),
        ..Default::default()
    }
}

fn check<M: Message + Default + PartialEq + std::fmt::Debug>(wire: &[u8], expected: &M) {
    let decoded = M::decode(wire).expect("vector decodes");
    assert_eq!(&decoded, expected);
    assert_eq!(
        expected.encode_to_vec(),
        wire,
        "re-encodes to the same bytes"
    );
}

#[test]
fn uid_header_form_of_the_vector_uid() {
    assert_eq!(
        InstanceUid::from_array(UID).to_string(),
        "0191e3a8-c4b2-7c3d-8e9f-0a1b2c3d4e5f"
    );
}

#[test]
fn agent_to_server_with_capabilities() {
    let message = AgentToServer {
        sequence_num: 1,
        capabilities: (AgentCapabilities::REPORTS_STATUS
            | AgentCapabilities::ACCEPTS_REMOTE_CONFIG)
            .bits(),
        ..agent_base()
    };
    check(&with_uid("10 01 20 03"), &message);
}

#[test]
fn msg_agent_disconnect_is_present_though_empty() {
    let wire = with_uid("10 07 20 01 4a 00");
    let message = AgentToServer {
        sequence_num: 7,
        capabilities: 1,
        agent_disconnect: Some(AgentDisconnect {}),
        ..agent_base()
    };
    check(&wire, &message);
    // Without the field, the message is different and shorter.
    let absent = AgentToServer {
        agent_disconnect: None,
        ..message
    };
    assert_eq!(absent.encode_to_vec(), with_uid("10 07 20 01"));
}

#[test]
fn cmd_restart_command_is_present_though_empty() {
    let message = ServerToAgent {
        command: Some(ServerToAgentCommand {
            r#type: CommandType::Restart as i32,
        }),
        ..server_base()
    };
    check(&with_uid("4a 00"), &message);
    let decoded = ServerToAgent::decode(with_uid("").as_slice()).unwrap();
    assert!(
        decoded.command.is_none(),
        "no command field means no command"
    );
}

#[test]
fn server_to_agent_flags_and_capabilities() {
    let message = ServerToAgent {
        flags: ServerToAgentFlags::REPORT_FULL_STATE.bits(),
        capabilities: (ServerCapabilities::ACCEPTS_STATUS
            | ServerCapabilities::OFFERS_REMOTE_CONFIG)
            .bits(),
        ..server_base()
    };
    check(&with_uid("30 01 38 03"), &message);
    assert!(
        message
            .typed_flags()
            .contains(ServerToAgentFlags::REPORT_FULL_STATE)
    );
}

#[test]
fn server_error_unavailable_with_retry_info() {
    let message = ServerToAgent {
        error_response: Some(ServerErrorResponse {
            r#type: ServerErrorResponseType::Unavailable as i32,
            error_message: String::new(),
            details: Some(server_error_response::Details::RetryInfo(RetryInfo {
                retry_after_nanoseconds: 30_000_000_000,
            })),
        }),
        ..server_base()
    };
    check(&with_uid("12 0a 08 02 1a 06 08 80 d8 8e e1 6f"), &message);
}

#[test]
fn empty_message_is_zero_bytes() {
    assert!(AgentToServer::default().encode_to_vec().is_empty());
    assert_eq!(
        AgentToServer::decode(&[][..]).unwrap(),
        AgentToServer::default()
    );
}

#[test]
fn fixed64_times_use_wire_type_1() {
    let health = ComponentHealth {
        start_time_unix_nano: 1,
        ..Default::default()
    };
    assert_eq!(health.encode_to_vec(), unhex("11 01 00 00 00 00 00 00 00"));
}

#[test]
fn int_01_unknown_fields_and_enum_values_from_a_newer_peer_are_accepted() {
    // A known message followed by field 99 (varint), field 100 (bytes) and
    // field 101 (fixed32): a newer peer's additions.
    let mut wire = with_uid("10 05");
    wire.extend(unhex("98 06 2a")); // field 99, varint 42
    wire.extend(unhex("a2 06 03 61 62 63")); // field 100, "abc"
    wire.extend(unhex("ad 06 01 02 03 04")); // field 101, fixed32
    let decoded = AgentToServer::decode(wire.as_slice()).expect("unknown fields are skipped");
    assert_eq!(decoded.sequence_num, 5);
    assert_eq!(decoded.uid().unwrap(), InstanceUid::from_array(UID));

    // An enum number this version does not name decodes as a raw i32.
    let status = RemoteConfigStatus::decode(unhex("10 09").as_slice()).unwrap();
    assert_eq!(status.status, 9);
    assert!(RemoteConfigStatuses::try_from(status.status).is_err());
}

#[test]
fn byte_fields_share_the_input_buffer() {
    let body = Bytes::from(vec![b'x'; 4096]);
    let message = AgentRemoteConfig {
        config: Some(AgentConfigMap {
            config_map: [(
                String::new(),
                AgentConfigObject {
                    body: body.clone(),
                    content_type: "text/plain".into(),
                    role: "main".into(),
                },
            )]
            .into(),
        }),
        config_hash: Bytes::new(),
    };
    let wire = Bytes::from(message.encode_to_vec());
    let decoded = AgentRemoteConfig::decode(wire.clone()).unwrap();
    let decoded_body = &decoded.config.unwrap().config_map[""].body;
    // Zero-copy: the decoded body points into the wire buffer.
    let wire_range = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
    assert!(wire_range.contains(&(decoded_body.as_ptr() as usize)));
    assert_eq!(decoded_body, &body);
}

#[test]
fn rcfg_config_object_role_is_field_3_and_the_empty_key_sits_beside_others() {
    // spec v0.20.0: AgentConfigObject.role = 3 (tag byte 0x1a), and "" is a
    // valid key in a map of any size.
    let map = AgentConfigMap {
        config_map: [
            (
                String::new(),
                AgentConfigObject {
                    body: Bytes::from_static(b"a"),
                    content_type: "t".into(),
                    role: "r".into(),
                },
            ),
            (
                "c".to_owned(),
                AgentConfigObject {
                    body: Bytes::from_static(b"b"),
                    ..Default::default()
                },
            ),
        ]
        .into(),
    };
    // Entry "": key omitted (default), value = body "a", content_type "t", role "r".
    // Entry "c": key "c", value = body "b".
    let wire = unhex("0a 0b 12 09 0a 01 61 12 01 74 1a 01 72 0a 08 0a 01 63 12 03 0a 01 62");
    check(&wire, &map);
    // Encoders that write the empty key explicitly decode to the same map.
    let explicit_key =
        unhex("0a 0d 0a 00 12 09 0a 01 61 12 01 74 1a 01 72 0a 08 0a 01 63 12 03 0a 01 62");
    assert_eq!(
        AgentConfigMap::decode(explicit_key.as_slice()).unwrap(),
        map
    );
}

#[test]
#[allow(deprecated)]
fn the_old_name_agent_config_file_still_builds_the_same_message() {
    let old = AgentConfigFile {
        body: Bytes::from_static(b"x: 1"),
        content_type: "text/yaml".into(),
        role: String::new(),
    };
    let new: AgentConfigObject = old.clone();
    assert_eq!(old.encode_to_vec(), new.encode_to_vec());
}

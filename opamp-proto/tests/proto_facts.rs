//! Cross-checks the `.proto` files against `shared/opamp/proto-facts.md`, the
//! mechanically generated list of every message, field and enum value of the
//! spec commit we target. The facts file lives outside this repository (next
//! to the checkout); without it the test says so and checks nothing else.

use std::collections::BTreeSet;
use std::path::PathBuf;

use prost_types::field_descriptor_proto::{Label, Type};

fn facts_path() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    [
        "../../shared/opamp/proto-facts.md",
        "../shared/opamp/proto-facts.md",
    ]
    .iter()
    .map(|rel| root.join(rel))
    .find(|path| path.exists())
}

/// (message or enum, field or value name, number, type) from the facts table.
fn facts(text: &str) -> BTreeSet<(String, String, i32, String)> {
    let mut out = BTreeSet::new();
    let mut current: Option<(bool, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("#### message `") {
            current = Some((true, rest.split('`').next().unwrap().to_owned()));
            continue;
        }
        if let Some(rest) = line.strip_prefix("#### enum `") {
            current = Some((false, rest.split('`').next().unwrap().to_owned()));
            continue;
        }
        if line.starts_with("## ") {
            current = None;
        }
        let Some((is_message, owner)) = &current else {
            continue;
        };
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4
            || cells[1].starts_with('-')
            || cells[1] == "#"
            || cells[1] == "value name"
        {
            continue;
        }
        let unquote = |s: &str| s.trim_matches('`').to_owned();
        if *is_message {
            let Ok(number) = cells[1].parse::<i32>() else {
                continue;
            };
            let ty = cells[3].trim_end_matches(" (enum)").to_owned();
            let ty = if cells[4].starts_with("map") {
                ty
            } else {
                format!("{} {ty}", label_word(cells[4]))
            };
            out.insert((owner.clone(), unquote(cells[2]), number, ty));
        } else if let Ok(number) = cells[2].parse::<i32>() {
            out.insert((owner.clone(), unquote(cells[1]), number, "enum".to_owned()));
        }
    }
    out
}

fn label_word(label: &str) -> &'static str {
    if label.starts_with("repeated") {
        "repeated"
    } else {
        "singular"
    }
}

fn scalar_name(ty: Type) -> &'static str {
    match ty {
        Type::Double => "double",
        Type::Bool => "bool",
        Type::String => "string",
        Type::Bytes => "bytes",
        Type::Uint64 => "uint64",
        Type::Int64 => "int64",
        Type::Fixed64 => "fixed64",
        other => panic!("unexpected scalar {other:?}"),
    }
}

fn ours() -> BTreeSet<(String, String, i32, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto");
    let set = protox::compile(["opamp/v1/anyvalue.proto", "opamp/v1/opamp.proto"], [root]).unwrap();
    let mut out = BTreeSet::new();
    for file in &set.file {
        assert_eq!(file.package(), "opamp.proto.v1");
        for message in &file.message_type {
            let maps: Vec<_> = message
                .nested_type
                .iter()
                .filter(|n| n.options.as_ref().is_some_and(|o| o.map_entry()))
                .collect();
            for field in &message.field {
                let type_name = field.type_name().rsplit('.').next().unwrap_or_default();
                let ty = if let Some(entry) = maps.iter().find(|m| m.name() == type_name) {
                    let key = &entry.field[0];
                    let value = &entry.field[1];
                    let value_ty = match value.r#type() {
                        Type::Message | Type::Enum => {
                            value.type_name().rsplit('.').next().unwrap().to_owned()
                        }
                        other => scalar_name(other).to_owned(),
                    };
                    format!("map<{}, {value_ty}>", scalar_name(key.r#type()))
                } else {
                    let base = match field.r#type() {
                        Type::Message | Type::Enum => type_name.to_owned(),
                        other => scalar_name(other).to_owned(),
                    };
                    let label = if field.label() == Label::Repeated {
                        "repeated"
                    } else {
                        "singular"
                    };
                    format!("{label} {base}")
                };
                out.insert((
                    message.name().to_owned(),
                    field.name().to_owned(),
                    field.number(),
                    ty,
                ));
            }
        }
        for en in &file.enum_type {
            for value in &en.value {
                out.insert((
                    en.name().to_owned(),
                    value.name().to_owned(),
                    value.number(),
                    "enum".into(),
                ));
            }
        }
    }
    out
}

#[test]
fn proto_files_match_the_facts_field_for_field() {
    let Some(path) = facts_path() else {
        eprintln!("note: proto-facts.md not found beside the checkout; cross-check skipped");
        return;
    };
    let expected = facts(&std::fs::read_to_string(path).unwrap());
    // 184 field and enum numbers per the facts file's own count (plus the
    // 0-valued enum entries and map fields it lists the same way).
    assert!(expected.len() > 150, "parsed only {} facts", expected.len());
    let actual = ours();
    let missing: Vec<_> = expected.difference(&actual).collect();
    let extra: Vec<_> = actual.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing: {missing:#?}\nextra: {extra:#?}"
    );
}

//! Cross-checks the `.proto` files against `shared/opamp/proto-facts.md`, the
//! mechanically generated list of every message, field and enum value of
//! opamp-spec commit f56c7ae. We target release v0.20.0, which differs from
//! that commit in exactly two documented ways (`shared/opamp/spec-v0.20-changes.md`):
//! `AgentConfigFile` is renamed `AgentConfigObject`, and that message gains
//! `role = 3` (string). The test applies those two changes to the facts and
//! then demands equality, so any other difference still fails. The facts file
//! lives outside this repository (next to the checkout); without it the test
//! says so and checks nothing else.

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

/// The spec commit the facts file describes, from its "Source" section.
const FACTS_COMMIT: &str = "f56c7ae587e53e99f809f8d95ac5cc58cb7bb8dc";

/// Turns the facts of commit f56c7ae into those of release v0.20.0. Each
/// change must find what it replaces, so a facts file describing some other
/// version fails here instead of being patched into agreement.
fn apply_v0_20_changes(facts: &mut BTreeSet<(String, String, i32, String)>) {
    const OLD: &str = "AgentConfigFile";
    const NEW: &str = "AgentConfigObject";
    let renamed: Vec<_> = facts
        .iter()
        .filter(|(owner, _, _, ty)| owner == OLD || ty.contains(OLD))
        .cloned()
        .collect();
    let names: BTreeSet<_> = renamed
        .iter()
        .map(|(o, f, _, _)| format!("{o}.{f}"))
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "AgentConfigFile.body".to_owned(),
            "AgentConfigFile.content_type".to_owned(),
            "AgentConfigMap.config_map".to_owned(),
        ]),
        "the facts no longer mention {OLD} where f56c7ae did"
    );
    for fact in renamed {
        facts.remove(&fact);
        let (owner, field, number, ty) = fact;
        let owner = if owner == OLD { NEW.to_owned() } else { owner };
        facts.insert((owner, field, number, ty.replace(OLD, NEW)));
    }
    assert!(
        !facts
            .iter()
            .any(|(owner, _, number, _)| owner == NEW && *number == 3),
        "field 3 of {NEW} is already in the facts"
    );
    facts.insert((NEW.into(), "role".into(), 3, "singular string".into()));
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
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.contains(&format!("HEAD `{FACTS_COMMIT}`")),
        "proto-facts.md no longer describes commit {FACTS_COMMIT}; revise apply_v0_20_changes"
    );
    let mut expected = facts(&text);
    apply_v0_20_changes(&mut expected);
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

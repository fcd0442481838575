//! `CONFORMANCE.md` must list every spec rule ID the repository cites, and
//! every file or test it names must exist.
//!
//! Rule IDs look like `WS-04`: a prefix of two to five capitals, a dash and
//! two digits. Only prefixes that `CONFORMANCE.md` itself uses count, so
//! `UTF-8`, `SHA-256` or `RFC-6455` are never mistaken for rules. Rust
//! function names cite rules too, in lower case: `ws_04_...`, `pkg04_...`,
//! or `http_01_03_08_...` for HTTP-01, HTTP-03 and HTTP-08.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const CONFORMANCE: &str = "CONFORMANCE.md";
const SCANNED_EXTENSIONS: [&str; 4] = ["rs", "go", "md", "sh"];

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives inside the workspace")
        .to_path_buf()
}

/// The IDs in the first column of the tables.
fn listed_ids(conformance: &str) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for line in conformance.lines() {
        let Some(rest) = line.strip_prefix("| ") else {
            continue;
        };
        let first_cell = rest.split(" |").next().unwrap_or_default().trim();
        if is_rule_id(first_cell) {
            *ids.entry(first_cell.to_owned()).or_insert(0) += 1;
        }
    }
    ids
}

fn is_rule_id(text: &str) -> bool {
    let Some((prefix, number)) = text.split_once('-') else {
        return false;
    };
    (2..=5).contains(&prefix.len())
        && prefix.bytes().all(|b| b.is_ascii_uppercase())
        && number.len() == 2
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// Upper-case IDs with a known prefix, standing alone in `text`.
fn ids_in_text(text: &str, prefixes: &BTreeSet<String>) -> Vec<String> {
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_uppercase() || (i > 0 && (word(bytes[i - 1]) || bytes[i - 1] == b'-'))
        {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_uppercase() {
            i += 1;
        }
        let prefix = &text[start..i];
        let has_number = bytes.get(i) == Some(&b'-')
            && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_digit)
            && !bytes.get(i + 3).is_some_and(|&b| word(b));
        if has_number && prefixes.contains(prefix) {
            found.push(text[start..i + 3].to_owned());
            i += 3;
        }
    }
    found
}

/// IDs cited by a Rust function name: `ws_04_x`, `pkg04_pkg18_x`,
/// `http_01_03_08_x` (numbers after a prefix share it).
fn ids_in_function_name(name: &str, prefixes: &BTreeSet<String>) -> Vec<String> {
    let mut found = Vec::new();
    let mut current: Option<String> = None;
    for token in name.split('_') {
        let upper = token.to_ascii_uppercase();
        let digits_at = upper.len().saturating_sub(2);
        let (letters, digits) = upper.split_at(digits_at);
        let two_digits = digits.len() == 2 && digits.bytes().all(|b| b.is_ascii_digit());
        if two_digits && prefixes.contains(letters) {
            found.push(format!("{letters}-{digits}"));
            current = Some(letters.to_owned());
        } else if prefixes.contains(&upper) {
            current = Some(upper);
        } else if let (Some(prefix), true, true) = (&current, two_digits, letters.is_empty()) {
            found.push(format!("{prefix}-{digits}"));
        } else {
            current = None;
        }
    }
    found
}

/// Names of the Rust functions defined in `source`.
fn function_names(source: &str) -> impl Iterator<Item = &str> {
    source.split("fn ").skip(1).filter_map(|after| {
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        (end > 0).then(|| &after[..end])
    })
}

fn source_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap();
        let path = entry.path();
        let name = entry.file_name();
        if entry.file_type().unwrap().is_dir() {
            if name != "target" && name != ".git" {
                source_files(&path, files);
            }
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| SCANNED_EXTENSIONS.contains(&e))
        {
            files.push(path);
        }
    }
}

/// Every ID cited in the repository, with the files that cite it.
fn cited_ids(root: &Path, prefixes: &BTreeSet<String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    source_files(root, &mut files);
    let mut cited: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in files {
        let relative = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if relative == CONFORMANCE {
            continue;
        }
        let Ok(text) = fs::read_to_string(&path) else {
            continue; // not UTF-8: cannot cite anything readable
        };
        let mut ids = ids_in_text(&text, prefixes);
        if relative.ends_with(".rs") {
            for name in function_names(&text) {
                ids.extend(ids_in_function_name(name, prefixes));
            }
        }
        for id in ids {
            cited.entry(id).or_default().insert(relative.clone());
        }
    }
    cited
}

/// Backticked references to repository files, optionally `::function`.
fn referenced_paths(conformance: &str) -> BTreeSet<&str> {
    conformance
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| {
            let file = span.split("::").next().unwrap_or_default();
            file.contains('/')
                && !file.contains(' ')
                && SCANNED_EXTENSIONS
                    .iter()
                    .any(|e| file.ends_with(&format!(".{e}")))
        })
        .collect()
}

/// Problems with one reference, if any.
fn check_reference(root: &Path, reference: &str) -> Option<String> {
    let (file, function) = match reference.split_once("::") {
        Some((file, function)) => (file, Some(function)),
        None => (reference, None),
    };
    let Ok(source) = fs::read_to_string(root.join(file)) else {
        return Some(format!("`{reference}`: no file {file}"));
    };
    let function = function?;
    let defined = if file.ends_with(".go") {
        source.contains(&format!("func {function}("))
    } else {
        function_names(&source).any(|name| name == function)
    };
    (!defined).then(|| format!("`{reference}`: {file} defines no function {function}"))
}

/// For a broken `path::function` reference: where a function of that name
/// is defined now, so a moved test is quick to fix.
fn moved_to(root: &Path, sources: &[PathBuf], reference: &str) -> String {
    let Some((_, function)) = reference.split_once("::") else {
        return String::new();
    };
    let places: Vec<String> = sources
        .iter()
        .filter(|path| {
            fs::read_to_string(path).is_ok_and(|source| {
                function_names(&source).any(|name| name == function)
                    || source.contains(&format!("func {function}("))
            })
        })
        .map(|path| path.strip_prefix(root).unwrap().display().to_string())
        .collect();
    if places.is_empty() {
        String::new()
    } else {
        format!(" (now defined in {})", places.join(", "))
    }
}

#[test]
fn every_cited_rule_is_listed_and_every_listed_test_exists() {
    let root = repository_root();
    let conformance = fs::read_to_string(root.join(CONFORMANCE))
        .unwrap_or_else(|e| panic!("cannot read {CONFORMANCE}: {e}"));
    let listed = listed_ids(&conformance);
    assert!(!listed.is_empty(), "{CONFORMANCE} lists no rule IDs");
    let duplicates: Vec<_> = listed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "rows listed more than once: {duplicates:?}"
    );
    let prefixes: BTreeSet<String> = listed
        .keys()
        .map(|id| id.split('-').next().unwrap().to_owned())
        .collect();

    let cited = cited_ids(&root, &prefixes);
    assert!(
        !cited.is_empty(),
        "the scan of {} found no citations",
        root.display()
    );
    let mut problems: Vec<String> = cited
        .iter()
        .filter(|(id, _)| !listed.contains_key(*id))
        .map(|(id, files)| {
            let files: Vec<&str> = files.iter().map(String::as_str).collect();
            format!(
                "{id} is cited but has no row (cited in {})",
                files.join(", ")
            )
        })
        .collect();
    let mut sources = Vec::new();
    source_files(&root, &mut sources);
    problems.extend(
        referenced_paths(&conformance)
            .into_iter()
            .filter_map(|reference| {
                let problem = check_reference(&root, reference)?;
                Some(problem + &moved_to(&root, &sources, reference))
            }),
    );
    assert!(
        problems.is_empty(),
        "{CONFORMANCE} is out of date:\n{}",
        problems.join("\n")
    );
}

fn prefixes(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|p| (*p).to_owned()).collect()
}

#[test]
fn only_known_prefixes_with_two_digits_count_as_rule_ids() {
    let known = prefixes(&["WS", "HTTP", "SEQ"]);
    let text = "WS-04 and (HTTP-17), SEQ-05: but not UTF-8, SHA-256, RFC-6455, \
                WS-123, XWS-04, WS-0, AWS-04, foo_WS-04 or WS-04b";
    assert_eq!(ids_in_text(text, &known), ["WS-04", "HTTP-17", "SEQ-05"]);
}

#[test]
fn function_names_cite_rules_in_lower_case() {
    let known = prefixes(&["WS", "HTTP", "PKG", "CMD", "UID"]);
    assert_eq!(
        ids_in_function_name("http_01_03_08_exchange_sends_headers", &known),
        ["HTTP-01", "HTTP-03", "HTTP-08"]
    );
    assert_eq!(
        ids_in_function_name("pkg04_pkg18_restart_keeps_packages", &known),
        ["PKG-04", "PKG-18"]
    );
    assert_eq!(
        ids_in_function_name("uid_08_cmd_01_cus_new_uid_and_2_commands_10_times", &known),
        ["UID-08", "CMD-01"]
    );
    assert!(ids_in_function_name("s1_full_state_ws", &known).is_empty());
}

#[test]
fn references_to_missing_files_and_functions_are_reported() {
    let root = repository_root();
    assert_eq!(
        check_reference(&root, "opamp-proto/tests/conformance.rs"),
        None
    );
    assert_eq!(
        check_reference(
            &root,
            "opamp-proto/tests/conformance.rs::references_to_missing_files_and_functions_are_reported"
        ),
        None
    );
    assert!(check_reference(&root, "opamp-proto/tests/no_such_file.rs").is_some());
    assert!(check_reference(&root, "opamp-proto/tests/conformance.rs::no_such_test").is_some());
}

//! The error codes clients see are one enum (`ErrorCode`, in the protocol crate). What the
//! documentation and the JavaScript client say about them is checked against it here, so neither
//! can drift: `docs/PROTOCOL.md` §8.9 lists every code with its status, its §8.1/§8.2 tables and the
//! README's error table name only real codes at their real status, and the JavaScript client retries
//! exactly the codes the enum calls retryable.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use eventsync::error::ErrorCode;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The text from the heading line starting with `heading` to the next heading of any level.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(&format!("\n{heading}"))
        .unwrap_or_else(|| panic!("no section {heading}"));
    let rest = &text[start + 1..];
    let body_start = rest.find('\n').map_or(rest.len(), |i| i + 1);
    let end = rest[body_start..]
        .find("\n#")
        .map_or(rest.len(), |i| body_start + i);
    &rest[..end]
}

/// Table rows of a section, split into trimmed cells (header and separator rows dropped).
fn rows(section: &str) -> Vec<Vec<String>> {
    section
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---") && !l.starts_with("| code |"))
        .filter(|l| !l.starts_with("| status |"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// Every `` `snake_case` `` word in a cell, outside parentheses (which hold a code's details, like
/// `current_version`).
fn codes_in(cell: &str) -> Vec<String> {
    let mut outside = String::new();
    let mut depth = 0usize;
    for ch in cell.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => outside.push(ch),
            _ => {}
        }
    }
    outside
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .map(str::to_string)
        .collect()
}

fn known() -> BTreeMap<&'static str, ErrorCode> {
    ErrorCode::ALL.iter().map(|c| (c.as_str(), *c)).collect()
}

#[test]
fn protocol_md_lists_every_code_with_its_status() {
    let doc = read("docs/PROTOCOL.md");
    let table: BTreeMap<String, u16> = rows(section(&doc, "### 8.9 Every error code"))
        .into_iter()
        .map(|cells| {
            let code = codes_in(&cells[0]).pop().expect("a code in the first column");
            let status = cells[1].parse().expect("a status in the second column");
            (code, status)
        })
        .collect();
    let enumerated: BTreeMap<String, u16> = ErrorCode::ALL
        .iter()
        .map(|c| (c.as_str().to_string(), c.status()))
        .collect();
    assert_eq!(table, enumerated, "docs/PROTOCOL.md §8.9 and ErrorCode disagree");
}

#[test]
fn the_protocol_and_readme_tables_name_only_real_codes_at_their_status() {
    let known = known();
    let doc = read("docs/PROTOCOL.md");
    for heading in ["### 8.1 ", "### 8.2 "] {
        for cells in rows(section(&doc, heading)) {
            for code in codes_in(&cells[0]) {
                assert!(
                    known.contains_key(code.as_str()),
                    "{heading}: `{code}` is no ErrorCode"
                );
            }
        }
    }
    let readme = read("README.md");
    let mut seen = BTreeSet::new();
    for cells in rows(section(&readme, "## Errors")) {
        let status: u16 = cells[0].parse().expect("a status in the README's first column");
        for code in codes_in(&cells[1]) {
            let c = known
                .get(code.as_str())
                .unwrap_or_else(|| panic!("README: `{code}` is no ErrorCode"));
            let dual = matches!(c, ErrorCode::TooDeep | ErrorCode::NotAnObject);
            assert!(
                c.status() == status || (dual && status == 400),
                "README lists `{code}` under {status}, the enum says {}",
                c.status()
            );
            seen.insert(code);
        }
    }
    assert!(
        seen.len() > 20,
        "the README's error table was not found whole: {seen:?}"
    );
}

#[test]
fn the_javascript_client_retries_exactly_the_retryable_codes() {
    let js = read("client/eventsync.js");
    let line = js
        .lines()
        .find(|l| l.contains("const RETRY_CODES = new Set("))
        .expect("RETRY_CODES in client/eventsync.js");
    let listed: BTreeSet<String> = line.split('\'').skip(1).step_by(2).map(str::to_string).collect();
    let retryable: BTreeSet<String> = ErrorCode::ALL
        .iter()
        .filter(|c| c.is_retryable())
        .map(|c| c.as_str().to_string())
        .collect();
    assert_eq!(listed, retryable);
}

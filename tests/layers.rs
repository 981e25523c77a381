//! The crate map's layers are true: every `crate::…` path in `src/` points to a module of an
//! earlier layer, or to the module's own subtree, as the "Layers" line in `src/lib.rs` says.
//! So no two top-level modules need each other (no circles), and a new arrow that goes the
//! wrong way fails here, naming the file. Reads the source; starts no server.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The layers as `src/lib.rs` writes them: "Layers …: `a`, `b` → `c` → …".
fn layers(lib: &str) -> Vec<Vec<String>> {
    let line = lib
        .lines()
        .skip_while(|l| !l.starts_with("//! Layers"))
        .take_while(|l| l.starts_with("//!") && !l.trim_end().eq("//!"))
        .map(|l| l.trim_start_matches("//!").trim())
        .collect::<Vec<_>>()
        .join(" ");
    let (_, chain) = line
        .split_once(':')
        .expect("src/lib.rs has a line \"//! Layers …: `a` → `b` …\"");
    chain
        .split('→')
        .map(|layer| {
            layer
                .split(',')
                .map(|m| m.trim().trim_end_matches('.').trim_matches('`').to_owned())
                .filter(|m| !m.is_empty())
                .collect()
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a source file names through `crate::`, including inside
/// `use crate::{a::b, c};` groups. Comments are left out.
fn crate_paths(source: &str) -> Vec<String> {
    let code: String = source
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The names at the group's top level: `a` in `a::b`, `c`.
            let mut depth = 0;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start && depth == 0 => {
                        found.push(ident(&group[j..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.push(ident(rest));
        }
    }
    found.retain(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
    found
}

#[test]
fn every_crate_path_goes_to_an_earlier_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(root.join("lib.rs")).unwrap();
    let layers = layers(&lib);
    let layer_of: HashMap<&str, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.iter().map(move |m| (m.as_str(), i)))
        .collect();
    // Every module of the crate is in exactly one layer.
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    let mut listed: Vec<&str> = layers.iter().flatten().map(String::as_str).collect();
    listed.sort_unstable();
    let mut sorted = declared.clone();
    sorted.sort_unstable();
    assert_eq!(listed, sorted, "the Layers line lists each `pub mod` once");

    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut wrong = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&root).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap()
            .trim_end_matches(".rs");
        let Some(&mine) = layer_of.get(top) else {
            continue; // lib.rs, main.rs
        };
        let source = std::fs::read_to_string(&file).unwrap();
        for used in crate_paths(&source) {
            if used == top {
                continue;
            }
            match layer_of.get(used.as_str()) {
                Some(&theirs) if theirs < mine => {}
                _ => wrong.push(format!("{} uses crate::{used}", rel.display())),
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "arrows against the layers of src/lib.rs:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn crate_paths_are_found_in_groups_and_paths() {
    let source = "use crate::{auth::Claims, ids::{MemberId, SessionId}, protocol};\n\
                  let x = crate::clock::unix_now(); // crate::room is a comment\n";
    assert_eq!(crate_paths(source), ["auth", "ids", "protocol", "clock"]);
}

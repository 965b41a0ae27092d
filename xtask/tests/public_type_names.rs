//! No two crates of the workspace define public types of the same name: a reader who meets
//! `CallError` or `Failure` should not have to check which crate it came from to know what it
//! means.
//!
//! Every `pub struct`, `pub enum`, `pub trait`, `pub type` and `pub union` in the sources of
//! `crates/*/src` counts (binaries excluded). The workspace denies `unreachable_pub`, so each of
//! them is reachable from its crate's API. Re-exports (`pub use`) and generated code are not
//! checked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Names several crates define on purpose, with the same meaning.
const SHARED: &[&str] = &[
    // `Box<dyn std::error::Error + Send + Sync>` in shoal-storage and shoal-lanes.
    "BoxError",
];

fn library_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if path.is_dir() {
            if name != "bin" {
                library_sources(&path, out);
            }
        } else if name.ends_with(".rs") && name != "main.rs" {
            out.push(path);
        }
    }
}

/// The names of the public types a source file defines.
fn public_types(source: &str) -> impl Iterator<Item = &str> {
    source.lines().filter_map(|line| {
        let rest = line.trim_start().strip_prefix("pub ")?;
        let rest = ["struct ", "enum ", "trait ", "type ", "union "]
            .iter()
            .find_map(|keyword| rest.strip_prefix(keyword))?;
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        Some(&rest[..end]).filter(|name| !name.is_empty())
    })
}

#[test]
fn no_two_crates_define_a_public_type_of_the_same_name() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    let mut definers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for krate in fs::read_dir(&crates).unwrap() {
        let krate = krate.unwrap().path();
        let src = krate.join("src");
        if !src.is_dir() {
            continue;
        }
        let crate_name = krate.file_name().unwrap().to_string_lossy().into_owned();
        let mut files = Vec::new();
        library_sources(&src, &mut files);
        for file in files {
            for name in public_types(&fs::read_to_string(&file).unwrap()) {
                definers
                    .entry(name.to_owned())
                    .or_default()
                    .insert(crate_name.clone());
            }
        }
    }
    assert!(
        definers.len() > 100,
        "found only {} public types under {}: is the walk broken?",
        definers.len(),
        crates.display()
    );
    let clashes: Vec<_> = definers
        .iter()
        .filter(|(name, crates)| crates.len() > 1 && !SHARED.contains(&name.as_str()))
        .collect();
    assert!(
        clashes.is_empty(),
        "public types with the same name in several crates (give each a name that says what it \
         is): {clashes:?}"
    );
}

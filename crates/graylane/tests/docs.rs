//! The documentation's maps of the code stay true: every file path the README and
//! docs/architecture.md name in backticks exists in the tree.

use std::path::Path;

/// The `crates/...`, `docs/...`, `bench/...` and `scripts/...` paths in backticks in `text`.
fn named_paths(text: &str) -> Vec<String> {
    let roots = ["crates/", "docs/", "bench/", "scripts/", "fuzz/"];
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| roots.iter().any(|r| s.starts_with(r)))
        .filter(|s| !s.contains(' ') && !s.contains('{') && !s.contains('*'))
        .map(|s| s.trim_end_matches([',', '.', ':', ')']).to_string())
        .collect()
}

#[test]
fn every_file_the_docs_name_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut checked = 0;
    for doc in ["README.md", "docs/architecture.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        let paths = named_paths(&text);
        assert!(!paths.is_empty(), "{doc} names no file");
        for path in paths {
            assert!(
                root.join(&path).exists(),
                "{doc} names `{path}`, which does not exist"
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} paths were checked");
}

#[test]
fn the_path_finder_sees_paths_and_skips_prose() {
    let found = named_paths("see `crates/a/src/b.rs`, not `cargo test` or `crates/x {y}`");
    assert_eq!(found, ["crates/a/src/b.rs"]);
}

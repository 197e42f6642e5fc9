//! docs/statistics.md is the statistics reference the code and README cite: every citation
//! names a section that exists, nothing cites a reference outside the repository, and every
//! test the document lists as pinning a vector exists in `src/stats/`.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The files that may cite the document: sources, benches, README and the benchmark table.
fn citing_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["src", "benches"] {
        rust_files(&root().join(dir), &mut files);
    }
    files.push(root().join("README.md"));
    files.push(root().join("bench/README-table.md"));
    files
}

fn doc() -> String {
    std::fs::read_to_string(root().join("docs/statistics.md")).expect("docs/statistics.md exists")
}

#[test]
fn statistics_citations_name_existing_sections() {
    let doc = doc();
    let mut cited = 0;
    for file in citing_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (at, _) in text.match_indices("docs/statistics.md") {
            let rest = &text[at + "docs/statistics.md".len()..];
            let rest = rest.strip_prefix(")").unwrap_or(rest);
            let Some(section) = rest.strip_prefix(" §") else {
                continue;
            };
            let number: String = section.chars().take_while(char::is_ascii_digit).collect();
            assert!(!number.is_empty(), "{}: bad citation", file.display());
            assert!(
                doc.contains(&format!("\n## {number}. ")),
                "{} cites docs/statistics.md §{number}, which does not exist",
                file.display()
            );
            cited += 1;
        }
    }
    assert!(cited >= 5, "only {cited} citations found");
}

#[test]
fn nothing_cites_a_statistics_reference_outside_the_repository() {
    for file in citing_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("statistics reference"),
            "{} cites \"the statistics reference\"; cite docs/statistics.md instead",
            file.display()
        );
    }
}

#[test]
fn every_vector_test_the_document_lists_exists() {
    let doc = doc();
    let mut sources = String::new();
    let mut files = Vec::new();
    rust_files(&root().join("src/stats"), &mut files);
    for f in files {
        sources.push_str(&std::fs::read_to_string(f).unwrap());
    }
    let mut listed = 0;
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let name = line[3..].split('`').next().unwrap();
        // `module::test`, or `…_suffix` for a sibling of the previous row.
        let test = name.rsplit("::").next().unwrap().trim_start_matches('…');
        assert!(
            sources.contains(&format!("fn {test}"))
                || sources.contains(&format!("{test}()"))
                || sources
                    .lines()
                    .any(|l| l.contains("fn ") && l.contains(test)),
            "docs/statistics.md lists {name}, which is not a test in src/stats"
        );
        listed += 1;
    }
    assert!(listed >= 10, "only {listed} vector tests listed");
}

//! The README shows the decision-quality benchmark's real output: `bench/README-table.md`, which
//! `cargo bench --bench quality` writes, must appear in it verbatim.

#[test]
fn readme_embeds_the_benchmark_table_verbatim() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README.md");
    let table =
        std::fs::read_to_string(format!("{root}/bench/README-table.md")).expect("table file");
    // Without the generated-file comment line, which the README does not need.
    let body = table
        .split_once('\n')
        .map(|(first, rest)| {
            if first.starts_with("<!--") {
                rest
            } else {
                &table
            }
        })
        .unwrap_or(&table)
        .trim();
    assert!(body.contains("| errors ×2 | greenlight"), "{body}");
    assert!(
        readme.contains(body),
        "README.md does not contain bench/README-table.md; paste the regenerated table into it"
    );
}

//! Located errors: `file:line:col` from byte offsets, and echoed values cut to a readable length.

use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::PolicyError;

/// Characters of a value a message shows before cutting it.
const SHOWN_CHARS: usize = 60;
/// Characters of a whole message (such as a TOML error quoting a value) before cutting it.
const MESSAGE_CHARS: usize = 400;
/// Errors reported for one file; past that, one line says how many more there are.
const ERRORS_PER_FILE: usize = 50;

/// `value` quoted for a message, cut after [`SHOWN_CHARS`] characters: a message never repeats a
/// whole (possibly huge) value.
pub(super) fn shown(value: &str) -> String {
    let count = value.chars().count();
    if count <= SHOWN_CHARS {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(SHOWN_CHARS).collect();
        format!("{head:?}… ({count} characters)")
    }
}

/// A URL or address for a message, as [`shown`], with any `user:password@` part replaced by
/// `***@`; a value with an `@` that cannot be told apart is not shown at all.
pub(super) fn shown_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => shown(&format!("{scheme}://***@{}", &rest[at + 1..])),
                None => shown(url),
            }
        }
        None if url.contains('@') => "(a value with '@', not shown)".into(),
        None => shown(url),
    }
}

/// `message` cut in the middle when longer than [`MESSAGE_CHARS`].
fn cut_message(message: String) -> String {
    let count = message.chars().count();
    if count <= MESSAGE_CHARS {
        return message;
    }
    let head: String = message.chars().take(MESSAGE_CHARS - 100).collect();
    let tail: String = message.chars().skip(count - 80).collect();
    format!(
        "{head}… ({} characters cut) …{tail}",
        count - head.chars().count() - 80
    )
}

/// Collects located errors for one file.
pub(super) struct Errors<'a> {
    text: &'a str,
    file: &'a Path,
    list: Vec<PolicyError>,
}

impl<'a> Errors<'a> {
    pub(super) fn new(text: &'a str, file: &'a Path) -> Self {
        Errors {
            text,
            file,
            list: Vec::new(),
        }
    }

    /// Records `message` at the start of `span` (an empty default span means line 1, column 1).
    pub(super) fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.at_offset(span.start, message);
    }

    /// Records `message` at byte `offset` of the text.
    pub(super) fn at_offset(&mut self, offset: usize, message: impl Into<String>) {
        let (line, col) = line_col(self.text, offset);
        self.list.push(PolicyError {
            file: self.file.to_path_buf(),
            line,
            col,
            message: cut_message(message.into()),
        });
    }

    /// Records a TOML syntax or type error, located by its span.
    pub(super) fn toml(&mut self, error: &toml::de::Error) {
        let offset = error.span().map(|s| s.start).unwrap_or(0);
        let message = error.message().trim_end().to_string();
        self.at_offset(offset, message);
    }

    /// Records `message` at character `index` of the string value `value` found at `span`.
    /// Falls back to the start of the value when the literal holds escapes.
    pub(super) fn in_string(
        &mut self,
        span: Range<usize>,
        value: &str,
        index: usize,
        message: impl Into<String>,
    ) {
        let offset = string_offset(self.text, span, value, index);
        self.at_offset(offset, message);
    }

    pub(super) fn file(&self) -> &Path {
        self.file
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The errors, in file order.
    pub(super) fn into_sorted(mut self) -> Vec<PolicyError> {
        self.list.sort_by_key(|e| (e.line, e.col));
        if self.list.len() > ERRORS_PER_FILE {
            let more = self.list.len() - ERRORS_PER_FILE;
            self.list.truncate(ERRORS_PER_FILE);
            self.list.push(PolicyError {
                file: self.file.to_path_buf(),
                line: 0,
                col: 0,
                message: format!("{more} more errors not shown"),
            });
        }
        self.list
    }

    pub(super) fn location(&self, span: Range<usize>) -> (usize, usize) {
        line_col(self.text, span.start)
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// Byte offset in `text` of byte `index` of the string `value` whose literal sits at `span`.
fn string_offset(text: &str, span: Range<usize>, value: &str, index: usize) -> usize {
    let Some(literal) = text.get(span.clone()) else {
        return span.start;
    };
    let delim = if literal.starts_with("'''") || literal.starts_with("\"\"\"") {
        3
    } else if literal.starts_with('\'') || literal.starts_with('"') {
        1
    } else {
        return span.start;
    };
    if literal.len() < 2 * delim {
        return span.start;
    }
    let inner = &literal[delim..literal.len() - delim];
    if inner == value {
        span.start + delim + index
    } else {
        span.start
    }
}

/// The first non-default span of `spans` (default values carry `0..0`).
pub(super) fn explicit(spans: &[Range<usize>]) -> Range<usize> {
    spans
        .iter()
        .find(|s| !s.is_empty())
        .cloned()
        .unwrap_or(0..0)
}

/// A default value: no location in the file.
pub(super) fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

/// A number as a message shows it: plain when short, else in scientific notation (`1e308`,
/// not three hundred digits).
pub(super) fn number(x: f64) -> String {
    let plain = x.to_string();
    if plain.len() <= 16 {
        plain
    } else {
        format!("{x:e}")
    }
}

/// Parses `text` as TOML into `T`, turning a syntax or type error into a located error.
pub(super) fn parse_toml<'de, T: Deserialize<'de>>(
    text: &'de str,
    errors: &mut Errors<'_>,
) -> Option<T> {
    match toml::from_str::<T>(text) {
        Ok(value) => Some(value),
        Err(e) => {
            errors.toml(&e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = "x".repeat(1_000_000);
        assert_eq!(
            shown(&long),
            format!("\"{}\"… (1000000 characters)", "x".repeat(60))
        );
        assert_eq!(shown("short"), "\"short\"");
        assert_eq!(
            shown_url("http://user:hunter2@vm:8428/x"),
            "\"http://***@vm:8428/x\""
        );
        assert!(!shown_url("user:hunter2@vm:8428").contains("hunter2"));
        let mut errors = Errors::new("", Path::new("p.toml"));
        errors.at(
            0..0,
            format!("invalid type: string \"{long}\", expected i64"),
        );
        let e = errors.into_sorted();
        assert!(e[0].message.len() < 600, "{}", e[0].message.len());
        assert!(
            e[0].message.ends_with("\", expected i64"),
            "{}",
            e[0].message
        );
    }

    #[test]
    fn at_most_fifty_errors_per_file_are_listed() {
        let mut errors = Errors::new("", Path::new("p.toml"));
        for i in 0..5000 {
            errors.at(0..0, format!("problem {i}"));
        }
        let e = errors.into_sorted();
        assert_eq!(e.len(), 51);
        assert_eq!(e[50].to_string(), "p.toml: 4950 more errors not shown");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 2), (1, 2));
    }
}

//! Located errors: `file:line:col` from byte offsets, and echoed values cut to a readable length.

use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::PolicyError;

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
            message: message.into(),
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

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The errors, in file order.
    pub(super) fn into_sorted(mut self) -> Vec<PolicyError> {
        self.list.sort_by_key(|e| (e.line, e.col));
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
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 2), (1, 2));
    }
}

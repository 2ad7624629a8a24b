//! Config errors with a place: `file:line:column: message`, collected rather than thrown.

use std::fmt;

/// One problem in a topology file, at a place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file, as the user named it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong, naming the node in quotes.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Turns byte offsets of a source text into lines and columns.
#[derive(Debug, Clone)]
pub struct SourceMap {
    file: String,
    line_starts: Vec<usize>,
    text: String,
}

impl SourceMap {
    pub fn new(file: impl Into<String>, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            file: file.into(),
            line_starts,
            text: text.to_owned(),
        }
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let start = self.line_starts[line];
        let column = self.text[start..offset].chars().count() + 1;
        (line + 1, column)
    }

    /// A diagnostic at a byte offset (the start of the file when unknown).
    pub fn at(&self, offset: Option<usize>, message: impl Into<String>) -> Diagnostic {
        let (line, column) = self.position(offset.unwrap_or(0));
        Diagnostic {
            file: self.file.clone(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// The closest candidate to a misspelt name, if one is close enough to suggest.
pub fn suggest<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(wrong, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `; did you mean "x"?` or nothing.
pub fn did_you_mean<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    suggest(wrong, candidates)
        .map(|s| format!("; did you mean \"{s}\"?"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let map = SourceMap::new("t.toml", "a = 1\nзоря = \"x\"\n");
        assert_eq!(map.position(0), (1, 1));
        assert_eq!(map.position(6), (2, 1));
        // "зоря" is 8 bytes, 4 characters
        assert_eq!(map.position(6 + 8 + 3), (2, 8));
    }

    #[test]
    fn suggestions_are_close_names_only() {
        assert_eq!(suggest("tpoic", ["topic", "inputs", "type"]), Some("topic"));
        assert_eq!(suggest("vaildate", ["validate", "clean"]), Some("validate"));
        assert_eq!(suggest("zzzzzz", ["topic", "inputs"]), None);
    }
}

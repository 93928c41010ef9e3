//! A cursor over one allowed-signers line: words, spaces, quoted option values, and parse
//! errors that name their column.

/// A parse problem within one line (the line number is added by the caller).
pub(super) struct LineError {
    pub(super) column: usize,
    pub(super) message: String,
}

/// A byte position within one line; every delimiter looked for is ASCII, so positions stay on
/// character boundaries.
pub(super) struct Cursor<'a> {
    pub(super) line: &'a str,
    pub(super) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn peek(&self) -> Option<u8> {
        self.line.as_bytes().get(self.pos).copied()
    }

    pub(super) fn at_space_or_end(&self) -> bool {
        matches!(self.peek(), None | Some(b' ' | b'\t'))
    }

    pub(super) fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// The text up to the next space or tab.
    pub(super) fn word(&mut self) -> &'a str {
        let start = self.pos;
        while !self.at_space_or_end() {
            self.pos += 1;
        }
        self.line.get(start..self.pos).unwrap_or("")
    }

    /// Consumes `prefix` (ASCII, any case) if the line continues with it.
    pub(super) fn eat_ignore_case(&mut self, prefix: &str) -> bool {
        let end = self.pos + prefix.len();
        match self.line.get(self.pos..end) {
            Some(s) if s.eq_ignore_ascii_case(prefix) => {
                self.pos = end;
                true
            }
            _ => false,
        }
    }

    /// 1-based column (in characters) of a byte position.
    fn column_of(&self, pos: usize) -> usize {
        self.line.get(..pos).map_or(pos, |s| s.chars().count()) + 1
    }

    pub(super) fn error(&self, pos: usize, message: impl Into<String>) -> LineError {
        LineError {
            column: self.column_of(pos),
            message: message.into(),
        }
    }

    /// A double-quoted option value (`\"` escapes a quote), as ssh-keygen's opt_dequote reads it.
    pub(super) fn quoted(&mut self, option: &str) -> Result<String, LineError> {
        if self.peek() != Some(b'"') {
            return Err(self.error(
                self.pos,
                format!("the value of {option} must be quoted, e.g. {option}=\"...\""),
            ));
        }
        let open = self.pos;
        self.pos += 1;
        let mut value = String::new();
        let mut rest = self.line.get(self.pos..).unwrap_or("").char_indices();
        while let Some((offset, c)) = rest.next() {
            match c {
                '"' => {
                    self.pos += offset + 1;
                    return Ok(value);
                }
                '\\' if self.line.as_bytes().get(self.pos + offset + 1) == Some(&b'"') => {
                    rest.next();
                    value.push('"');
                }
                c => value.push(c),
            }
        }
        Err(self.error(open, format!("the value of {option} has no closing quote")))
    }
}

//! Parsing YAML text into node trees with saphyr-parser's event stream (which gives every node
//! its position): documents, anchors and aliases (bounded), and syntax errors that point where
//! the user must look.

use std::borrow::Cow;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span, Tag};

use super::node::{Mark, Node, Scalar, Value};

/// A YAML document: its root node and where it starts.
#[derive(Clone, Debug)]
pub struct Document {
    pub root: Node,
    pub start: Mark,
}

/// A syntax error: the file cannot be parsed past `mark`.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    pub mark: Mark,
    pub message: String,
}

/// The most nodes alias expansion may produce in one file ("billion laughs" guard).
const MAX_NODES: usize = 1_000_000;

fn mark_of(marker: saphyr_parser::Marker) -> Mark {
    Mark::new(marker.line() as u32, marker.col() as u32 + 1)
}

/// Turns the parser's error into one that points where the user must look: an unclosed `[` or
/// `{` is reported where it opens (the parser only notices lines later), a tab at the tab.
fn scan_error(e: ScanError, text: &str, open_flow: Option<(Mark, char)>) -> SyntaxError {
    let mut mark = mark_of(*e.marker());
    let info = e.info();
    if let Some((open, bracket)) = open_flow {
        if open.line < mark.line {
            let (kind, close) = if bracket == '[' {
                ("sequence", ']')
            } else {
                ("mapping", '}')
            };
            return SyntaxError {
                mark: open,
                message: format!(
                    "invalid YAML: unclosed flow {kind}: this `{bracket}` has no matching `{close}` (the parser gave up at line {}: {info})",
                    mark.line
                ),
            };
        }
    }
    if info.contains("tab") && mark.column > 1 {
        let line = text.lines().nth(mark.line as usize - 1).unwrap_or("");
        if line.chars().nth(mark.column as usize - 2) == Some('\t') {
            mark.column -= 1;
        }
    }
    SyntaxError {
        mark,
        message: format!("invalid YAML: {info}"),
    }
}

enum Frame {
    Seq {
        mark: Mark,
        anchor: usize,
        items: Vec<Node>,
        flow: bool,
    },
    Map {
        mark: Mark,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        flow: bool,
    },
}

impl Frame {
    /// The innermost open flow collection: where it opens and its bracket.
    fn open_flow(stack: &[Frame]) -> Option<(Mark, char)> {
        match stack.last()? {
            Frame::Seq { mark, flow: true, .. } => Some((*mark, '[')),
            Frame::Map { mark, flow: true, .. } => Some((*mark, '{')),
            _ => None,
        }
    }
}

/// Finds the character at a character index; events arrive in order, so the cursor only moves
/// forward (linear in the file, also for non-ASCII text).
struct CharCursor<'t> {
    text: &'t str,
    ascii: bool,
    chars: usize,
    bytes: usize,
}

impl CharCursor<'_> {
    fn char_at(&mut self, index: usize) -> Option<char> {
        if self.ascii {
            return self.text.as_bytes().get(index).map(|b| *b as char);
        }
        if index < self.chars {
            self.chars = 0;
            self.bytes = 0;
        }
        for c in self.text[self.bytes..].chars() {
            if self.chars == index {
                return Some(c);
            }
            self.chars += 1;
            self.bytes += c.len_utf8();
        }
        None
    }
}

/// Parses every document of a YAML stream. Documents before a syntax error are returned with it,
/// so that their own errors can still be reported. Empty documents are skipped.
pub fn parse_documents(text: &str) -> (Vec<Document>, Option<SyntaxError>) {
    let mut builder = TreeBuilder::new(text);
    for item in Parser::new_from_str(text) {
        let step = match item {
            Ok((event, span)) => builder.event(event, span),
            Err(e) => Err(scan_error(e, text, Frame::open_flow(&builder.stack))),
        };
        if let Err(error) = step {
            return (builder.documents, Some(error));
        }
    }
    (builder.documents, None)
}

/// Builds node trees from parser events: the documents finished so far, the collections still
/// open, and the anchors of the current document.
struct TreeBuilder<'t> {
    documents: Vec<Document>,
    stack: Vec<Frame>,
    anchors: Vec<Option<Node>>,
    doc_start: Mark,
    root: Option<Node>,
    /// Nodes made so far, alias expansions included (checked against `MAX_NODES`).
    nodes: usize,
    /// Flow collections are told from block ones by their opening bracket; events do not say.
    cursor: CharCursor<'t>,
}

impl<'t> TreeBuilder<'t> {
    fn new(text: &'t str) -> Self {
        TreeBuilder {
            documents: Vec::new(),
            stack: Vec::new(),
            anchors: Vec::new(),
            doc_start: Mark::new(1, 1),
            root: None,
            nodes: 0,
            cursor: CharCursor {
                text,
                ascii: text.is_ascii(),
                chars: 0,
                bytes: 0,
            },
        }
    }

    /// Takes one event: a finished node (scalar, alias, closed collection) goes into its parent.
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), SyntaxError> {
        let mark = mark_of(span.start);
        let finished: Option<(Node, usize)> = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                self.doc_start = mark;
                self.root = None;
                self.anchors.clear();
                None
            }
            Event::DocumentEnd => {
                self.end_document();
                None
            }
            Event::Alias(id) => Some((self.alias(id, mark)?, 0)),
            Event::Scalar(text, style, anchor, tag) => Some((self.scalar(text, style, tag, mark)?, anchor)),
            Event::SequenceStart(anchor, _) => {
                let flow = self.cursor.char_at(span.start.index()) == Some('[');
                self.stack.push(Frame::Seq {
                    mark,
                    anchor,
                    items: Vec::new(),
                    flow,
                });
                None
            }
            Event::MappingStart(anchor, _) => {
                let flow = self.cursor.char_at(span.start.index()) == Some('{');
                self.stack.push(Frame::Map {
                    mark,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                    flow,
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => self.close_collection(),
        };
        if let Some((node, anchor)) = finished {
            self.attach(node, anchor);
        }
        Ok(())
    }

    /// Keeps the finished document unless it is empty.
    fn end_document(&mut self) {
        if let Some(node) = self.root.take() {
            if !node.is_null() {
                self.documents.push(Document {
                    root: node,
                    start: self.doc_start,
                });
            }
        }
    }

    /// A copy of the anchored node, counted against the node limit.
    fn alias(&mut self, id: usize, mark: Mark) -> Result<Node, SyntaxError> {
        match self.anchors.get(id).and_then(Option::as_ref) {
            Some(node) => {
                self.nodes += count_nodes(node);
                if self.nodes > MAX_NODES {
                    let message = format!("aliases expand to more than {MAX_NODES} nodes");
                    return Err(SyntaxError { mark, message });
                }
                Ok(node.clone())
            }
            None => {
                let message = "alias refers to an unknown anchor".to_string();
                Err(SyntaxError { mark, message })
            }
        }
    }

    /// A scalar node; `!!str` makes it a string, other core tags leave it plain.
    fn scalar(
        &mut self,
        text: Cow<'_, str>,
        style: ScalarStyle,
        tag: Option<Cow<'_, Tag>>,
        mark: Mark,
    ) -> Result<Node, SyntaxError> {
        let mut plain = style == ScalarStyle::Plain;
        if let Some(tag) = tag {
            let name = format!("{}{}", tag.handle, tag.suffix);
            match name.as_str() {
                "!!str" | "tag:yaml.org,2002:str" => plain = false,
                "!!int" | "!!float" | "!!bool" | "!!null" | "tag:yaml.org,2002:int" => {}
                _ => {
                    let message = format!(
                        "invalid YAML: unsupported tag `{name}`: only YAML core tags such as !!str are allowed"
                    );
                    return Err(SyntaxError { mark, message });
                }
            }
        }
        self.nodes += 1;
        Ok(Node {
            mark,
            value: Value::Scalar(Scalar {
                text: text.into_owned(),
                plain,
            }),
        })
    }

    /// The innermost open collection, closed: its node and anchor.
    fn close_collection(&mut self) -> Option<(Node, usize)> {
        let (mark, anchor, value) = match self.stack.pop()? {
            Frame::Seq {
                mark, anchor, items, ..
            } => (mark, anchor, Value::Seq(items)),
            Frame::Map {
                mark, anchor, entries, ..
            } => (mark, anchor, Value::Map(entries)),
        };
        self.nodes += 1;
        Some((Node { mark, value }, anchor))
    }

    /// Records a finished node under its anchor and puts it in its parent (or makes it the root).
    fn attach(&mut self, mut node: Node, anchor: usize) {
        if anchor > 0 {
            if self.anchors.len() <= anchor {
                self.anchors.resize(anchor + 1, None);
            }
            self.anchors[anchor] = Some(node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => {
                    // An empty value (`spec:`) sits at the `:`; point at its key instead.
                    if node.as_scalar().is_some_and(|s| s.plain && s.text.is_empty()) {
                        node.mark = k.mark;
                    }
                    entries.push((k, node))
                }
            },
        }
    }
}

fn count_nodes(node: &Node) -> usize {
    match &node.value {
        Value::Scalar(_) => 1,
        Value::Seq(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| count_nodes(k) + count_nodes(v))
                .sum::<usize>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        let (mut docs, error) = parse_documents(text);
        assert!(error.is_none(), "{error:?}");
        docs.remove(0).root
    }

    #[test]
    fn multi_document_streams_skip_empty_documents() {
        let (docs, error) = parse_documents("---\na: 1\n---\n# nothing\n---\nb: 2\n");
        assert!(error.is_none());
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].root.mark.line, 6);
    }

    #[test]
    fn syntax_errors_keep_earlier_documents() {
        let (docs, error) = parse_documents("a: 1\n---\nb: [1, 2\n");
        assert_eq!(docs.len(), 1);
        let error = error.unwrap();
        assert!(error.message.starts_with("invalid YAML"), "{}", error.message);
    }

    #[test]
    fn aliases_expand_and_are_bounded() {
        let node = one("base: &b [x, y]\ncopy: *b\n");
        assert_eq!(node.get("copy").unwrap(), node.get("base").unwrap());
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (prev, next) in ["a", "b", "c", "d", "e", "f", "g"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h"])
        {
            bomb.push_str(&format!("{next}: &{next} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        let (_, error) = parse_documents(&bomb);
        assert!(error.unwrap().message.contains("aliases expand"));
    }
}

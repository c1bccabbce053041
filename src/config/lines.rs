//! Maps a YAML document's key paths (`tokens[2].tenant`) to the line they stand on, so that a
//! semantic problem found after deserialisation can still name its `file:line`.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Key path → 1-based line number for every mapping key and sequence item in a document.
#[derive(Debug, Default, Clone)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

impl LineIndex {
    /// Builds the index; a document the YAML parser refuses yields an empty index (serde_yaml
    /// reports that error with its own location).
    pub fn build(source: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(source);
        let _ = parser.load(&mut builder, false);
        LineIndex {
            lines: builder.lines,
        }
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(line) = self.lines.get(p) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl Builder {
    /// Claims the next value position of the top frame, returning its path.
    fn value_path(&mut self, line: usize) -> Option<String> {
        match self.stack.last_mut()? {
            Frame::Map { path, key } => key.take().map(|k| join(path, &k)),
            Frame::Seq { path, index } => {
                let p = format!("{path}[{index}]");
                *index += 1;
                self.lines.entry(p.clone()).or_insert(line);
                Some(p)
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                    if key.is_none() {
                        let p = join(path, &value);
                        self.lines.entry(p).or_insert(line);
                        *key = Some(value);
                        return;
                    }
                }
                self.value_path(line);
            }
            Event::Alias(_) => {
                self.value_path(line);
            }
            Event::MappingStart(..) => {
                let path = self.value_path(line).unwrap_or_default();
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path(line).unwrap_or_default();
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_items() {
        let src = "a: 1\nserver:\n  tls:\n    cert: x\ntokens:\n  - id: one\n    tenant: t\n  - id: two\n    tenant: u\n    domains: [a.com, b.com]\n";
        let idx = LineIndex::build(src);
        assert_eq!(idx.line_of("a"), Some(1));
        assert_eq!(idx.line_of("server.tls.cert"), Some(4));
        assert_eq!(idx.line_of("tokens[0].id"), Some(6));
        assert_eq!(idx.line_of("tokens[1].tenant"), Some(9));
        assert_eq!(idx.line_of("tokens[1].domains[1]"), Some(10));
        // Falls back to the nearest ancestor.
        assert_eq!(idx.line_of("tokens[1].missing"), Some(8));
    }
}

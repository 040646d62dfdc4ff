//! Maps key paths (`services[0].release.steps[1]`) to their line and column in the YAML text,
//! so errors found after deserialization can still point at the right place.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// 1-based line and column of every key and sequence item in a document.
#[derive(Debug, Default)]
pub(crate) struct Locations {
    by_path: HashMap<String, (usize, usize)>,
}

impl Locations {
    /// Indexes `text`; an unparsable document yields an empty index (serde reports the error).
    pub(crate) fn index(text: &str) -> Locations {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return Locations::default();
        }
        Locations {
            by_path: builder.by_path,
        }
    }

    /// The location of `path`, or of its nearest ancestor that exists in the text.
    pub(crate) fn find(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(loc) = self.by_path.get(p) {
                return Some(*loc);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    by_path: HashMap<String, (usize, usize)>,
}

impl Builder {
    fn record(&mut self, path: String, mark: Marker) {
        self.by_path
            .entry(path)
            .or_insert((mark.line(), mark.col() + 1));
    }

    /// Called for every value (scalar, alias, or the start of a collection); returns its path.
    fn value_path(&mut self, mark: Marker) -> String {
        match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Map { path, key }) => {
                let k = key.take().unwrap_or_default();
                join_key(path, &k)
            }
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                self.record(p.clone(), mark);
                p
            }
        }
    }
}

pub(crate) fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map { path, key }) = self.stack.last_mut()
                    && key.is_none()
                {
                    let p = join_key(path, &value);
                    *key = Some(value);
                    self.record(p, mark);
                    return;
                }
                self.value_path(mark);
            }
            Event::Alias(_) => {
                self.value_path(mark);
            }
            Event::MappingStart(..) => {
                let path = self.value_path(mark);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path(mark);
                self.stack.push(Frame::Seq { path, next: 0 });
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
    fn finds_keys_and_items() {
        let text = "services:\n  - name: a\n    release:\n      steps:\n        - weight: 5\n        - weight: 500\n";
        let loc = Locations::index(text);
        assert_eq!(loc.find("services"), Some((1, 1)));
        assert_eq!(loc.find("services[0].name"), Some((2, 5)));
        assert_eq!(
            loc.find("services[0].release.steps[1].weight"),
            Some((6, 11))
        );
        assert_eq!(loc.find("services[0].release.nope"), Some((3, 5)));
    }

    #[test]
    fn flow_style_is_indexed_too() {
        let loc = Locations::index("a: { b: 1, c: [x, y] }\n");
        assert_eq!(loc.find("a.c"), Some((1, 12)));
    }
}

//! A cap on what YAML aliases (`*name`) repeat, checked on the parser's events before any value
//! is built. Both parsers copy an anchor's whole value for every alias to it, so a small
//! document can stand for a huge one: a 119 KB body (a 100,000-character anchor and 6,000
//! aliases to it) took the process from 56 MB to 748 MB, and anchors made of aliases to other
//! anchors grow exponentially. The events themselves are read in linear time and nothing is
//! copied; each anchor's expanded size is known when its node ends.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

/// The bytes (scalar text, plus one per node) all aliases together may add to a document. A
/// configuration that shares its release steps between a few dozen services stays far below.
pub(crate) const MAX_ALIAS_EXPANSION: usize = 1 << 20;

/// The 1-based line and column of the alias with which the document's aliases together repeat
/// more than [`MAX_ALIAS_EXPANSION`] bytes. A document the parser refuses passes: serde then
/// reports its syntax error as for any other.
pub(crate) fn too_much_expansion(text: &str) -> Option<(usize, usize)> {
    let mut parser = Parser::new_from_str(text);
    // Expanded size of each anchor, by the parser's anchor id.
    let mut anchors: HashMap<usize, usize> = HashMap::new();
    // Each open collection: its anchor id (0 for none) and its expanded size so far.
    let mut open: Vec<(usize, usize)> = Vec::new();
    let mut added = 0usize;
    loop {
        let (event, mark) = parser.next_token().ok()?;
        let (anchor, size) = match event {
            Event::StreamEnd => return None,
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                open.push((anchor, 1));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => open.pop()?,
            Event::Scalar(value, _, anchor, _) => (anchor, value.len() + 1),
            Event::Alias(id) => {
                let size = anchors.get(&id).copied().unwrap_or(1);
                added = added.saturating_add(size);
                if added > MAX_ALIAS_EXPANSION {
                    return Some((mark.line(), mark.col() + 1));
                }
                (0, size)
            }
            _ => continue,
        };
        if anchor != 0 {
            anchors.insert(anchor, size);
        }
        if let Some((_, parent)) = open.last_mut() {
            *parent = parent.saturating_add(size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_shared_a_few_times_pass() {
        let text = "defaults: &steps [{ weight: 10 }, { weight: 100 }]\n\
                    a: { steps: *steps }\nb: { steps: *steps }\nbase: &base { x: 1 }\nc: { <<: *base, y: 2 }\n";
        assert_eq!(too_much_expansion(text), None);
    }

    #[test]
    fn many_aliases_to_a_large_anchor_are_found_at_the_one_that_crosses_the_limit() {
        let big = "x".repeat(100_000);
        let mut text = format!("a: &s {big}\nb:\n");
        for _ in 0..6000 {
            text.push_str("  - *s\n");
        }
        // Ten aliases of 100,001 bytes fit in 1 MiB; the eleventh, on line 13, does not.
        assert_eq!(too_much_expansion(&text), Some((13, 5)));
    }

    #[test]
    fn anchors_made_of_aliases_grow_exponentially_and_are_caught() {
        let mut text = "l0: &l0 [aaaaaaaaaa]\n".to_string();
        for i in 1..30 {
            let refs = vec![format!("*l{}", i - 1); 9].join(", ");
            text.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
        }
        assert!(text.len() < 2000);
        assert!(too_much_expansion(&text).is_some());
    }

    #[test]
    fn a_document_the_parser_refuses_is_left_to_serde() {
        assert_eq!(too_much_expansion("a: [1, 2\nb: *nowhere\n"), None);
    }
}

//! A cap on how deeply a document nests, checked on the raw text before any YAML parser sees
//! it. Both parsers (and the location index) take time that grows with the square of the
//! nesting of flow collections (`[[[[…`): a 200 KB file nested 100,000 deep held a reload or an
//! API call for most of a minute before serde refused it.
//!
//! The check is a conservative, single-pass reading of YAML's structure, not a parser: it counts
//! open flow brackets outside quotes, comments and plain scalars, plus the block levels a line
//! opens (indentation, and `- - -` written on one line). It may count a level or so more than a
//! parser would, never fewer than half; the limit is far above any real configuration's depth.

/// Deeper than any real configuration (a rule tree is itself capped at 32) by a wide margin.
pub(crate) const MAX_NESTING: usize = 128;

/// The 1-based line and column where the document first nests deeper than [`MAX_NESTING`].
pub(crate) fn too_deep(text: &str) -> Option<(usize, usize)> {
    let mut flow = 0usize;
    // The indentation of each open block collection.
    let mut indents: Vec<usize> = Vec::new();
    let mut quote: Option<char> = None;
    // Inside a `|` or `>` scalar: the indentation its content must exceed.
    let mut block_scalar: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let mut rest = &line[indent..];
        if let Some(parent) = block_scalar {
            if rest.is_empty() || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        let mut block = indents.len();
        if flow == 0 && quote.is_none() {
            if rest.is_empty() || rest.starts_with('#') {
                continue;
            }
            while indents.last().is_some_and(|&i| i > indent) {
                indents.pop();
            }
            if indents.last() != Some(&indent) {
                indents.push(indent);
            }
            block = indents.len();
            // `- - - x` and `? - x` open one collection per indicator on a single line.
            while let Some(after) = ["- ", "? ", ": "]
                .iter()
                .find_map(|i| rest.strip_prefix(i))
                .or_else(|| (rest == "-").then_some(""))
            {
                block += 1;
                if block > MAX_NESTING {
                    return Some((n + 1, line.len() - rest.len() + 1));
                }
                rest = after.trim_start_matches(' ');
            }
            if block > MAX_NESTING {
                return Some((n + 1, indent + 1));
            }
        }
        let start = line.len() - rest.len();
        // A quote, bracket or block-scalar indicator only means one at the start of a token;
        // elsewhere (`don't`, `^a[0-9]$`) it is part of a plain scalar.
        let mut prev = ' ';
        let mut escaped = false;
        let mut chars = rest.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if let Some(q) = quote {
                if escaped {
                    escaped = false;
                } else if q == '"' && c == '\\' {
                    escaped = true;
                } else if c == q {
                    if q == '\'' && chars.peek().is_some_and(|&(_, next)| next == '\'') {
                        chars.next();
                    } else {
                        quote = None;
                    }
                }
                prev = c;
                continue;
            }
            let token_start =
                prev.is_whitespace() || (flow > 0 && matches!(prev, '[' | '{' | ',' | ':'));
            match c {
                '#' if prev.is_whitespace() => break,
                '"' | '\'' if token_start => quote = Some(c),
                '[' | '{' if flow > 0 || token_start => {
                    flow += 1;
                    if block + flow > MAX_NESTING {
                        let column = line[..start + i].chars().count() + 1;
                        return Some((n + 1, column));
                    }
                }
                ']' | '}' if flow > 0 => flow -= 1,
                '|' | '>' if flow == 0 && token_start => {
                    block_scalar = Some(indent);
                    break;
                }
                _ => {}
            }
            prev = c;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_flow(prefix: &str, n: usize) -> String {
        format!("{prefix}{}{}\n", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn a_deep_but_allowed_document_passes() {
        assert_eq!(too_deep(&nested_flow("a: ", MAX_NESTING - 1)), None);
    }

    #[test]
    fn one_flow_level_more_is_found_where_it_opens() {
        // `a`'s map is one level, so the 128th `[` (column 3 + 128) is the 129th.
        let text = nested_flow("a: ", MAX_NESTING);
        assert_eq!(too_deep(&text), Some((1, 3 + MAX_NESTING)));
    }

    #[test]
    fn block_sequences_on_one_line_count() {
        let text = format!("a:\n  {}x\n", "- ".repeat(MAX_NESTING));
        // Two levels above the line, so the 127th `-` (column 3 + 2 × 126) opens the 129th.
        assert_eq!(too_deep(&text), Some((2, 3 + 2 * (MAX_NESTING - 2))));
    }

    #[test]
    fn indentation_levels_count() {
        let text: String = (0..=MAX_NESTING)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect();
        assert_eq!(too_deep(&text), Some((MAX_NESTING + 1, MAX_NESTING + 1)));
    }

    #[test]
    fn brackets_in_quotes_comments_plain_and_block_scalars_do_not_count() {
        let many = "[".repeat(2 * MAX_NESTING);
        let text = format!(
            "a: \"{many}\"\nb: '{many}'' {many}'\nc: x{many}\n# {many}\nd: 1 # {many}\n\
             e: |\n  {many}\n\n  {many}\nf: [\"]\", '[', {{g: \"\\\"[\"}}]\n"
        );
        assert_eq!(too_deep(&text), None);
    }

    #[test]
    fn nesting_closes_again() {
        let text = nested_flow("a: ", 100).repeat(50);
        assert_eq!(too_deep(&text), None);
    }
}

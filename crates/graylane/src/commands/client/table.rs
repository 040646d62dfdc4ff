//! Plain aligned columns for the human output, and the cell formats the tables share.

/// Columns left-aligned and two spaces apart, one line per row, the header first. Widths count
/// characters, not bytes, so `·` and `→` in a cell do not push the next column out; a line
/// ends without padding.
pub(super) fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = width - cell.chars().count();
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// An RFC 3339 time from the API without its fraction of a second:
/// `2026-11-22T10:00:00.123Z` → `2026-11-22T10:00:00Z`.
pub(super) fn to_second(at: &str) -> String {
    let Some(dot) = at.find('.') else {
        return at.to_string();
    };
    let rest = &at[dot + 1..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    format!("{}{}", &at[..dot], &rest[digits..])
}

/// A percentage as the API's weights are set (at most three decimals), without float noise
/// or trailing zeros: `95.0` → `95%`, `12.5` → `12.5%`, `87.65500000000001` → `87.655%`.
pub(super) fn percent(weight: f64) -> String {
    let fixed = format!("{weight:.3}");
    let trimmed = fixed.trim_end_matches('0').trim_end_matches('.');
    format!("{trimmed}%")
}

/// An absent or empty text as `-`, so a blank cell cannot be mistaken for a misaligned one.
pub(super) fn or_dash(text: Option<&str>) -> String {
    match text {
        Some(t) if !t.is_empty() => t.to_string(),
        _ => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn columns_are_aligned_by_characters_and_lines_have_no_trailing_spaces() {
        let text = render(
            &["SERVICE", "WEIGHTS", "PAUSE"],
            &[
                row(&["payment", "stable 95% · canary 5%", "-"]),
                row(&["search", "blue 100%", "4m 1s left"]),
            ],
        );
        assert_eq!(
            text,
            "SERVICE  WEIGHTS                 PAUSE\n\
             payment  stable 95% · canary 5%  -\n\
             search   blue 100%               4m 1s left\n"
        );
    }

    #[test]
    fn an_empty_last_cell_leaves_no_padding_and_no_rows_leaves_the_header() {
        assert_eq!(
            render(&["N", "MESSAGE"], &[row(&["12", ""]), row(&["3", "x"])]),
            "N   MESSAGE\n12\n3   x\n"
        );
        assert_eq!(render(&["SEQ", "AT"], &[]), "SEQ  AT\n");
    }

    #[test]
    fn times_lose_only_their_fraction() {
        assert_eq!(
            to_second("2026-11-22T10:00:00.000Z"),
            "2026-11-22T10:00:00Z"
        );
        assert_eq!(
            to_second("2026-11-22T10:00:00.123456+01:00"),
            "2026-11-22T10:00:00+01:00"
        );
        assert_eq!(to_second("2026-11-22T10:00:00Z"), "2026-11-22T10:00:00Z");
    }

    #[test]
    fn percentages_drop_float_noise_and_trailing_zeros() {
        assert_eq!(percent(95.0), "95%");
        assert_eq!(percent(12.5), "12.5%");
        assert_eq!(percent(100.0 - 12.345), "87.655%");
        assert_eq!(percent(0.125), "0.125%");
        assert_eq!(percent(0.0), "0%");
    }

    #[test]
    fn absent_or_empty_text_is_a_dash() {
        assert_eq!(or_dash(None), "-");
        assert_eq!(or_dash(Some("")), "-");
        assert_eq!(or_dash(Some("why")), "why");
    }
}

//! Segments: inline member lists, member files and Redis sets, with their keys and refresh.

use std::time::Duration;

use super::Validator;
use crate::model::*;
use crate::raw::*;

impl Validator<'_> {
    pub(super) fn segments(
        &mut self,
        raw: std::collections::BTreeMap<String, RawSegment>,
    ) -> Vec<Segment> {
        let mut out = Vec::new();
        for (name, seg) in raw {
            let path = format!("segments.{name}");
            if let Some(source) = seg.source.as_deref() {
                if source != "redis" {
                    self.fail(
                        format!("{path}.source"),
                        format!("unknown source `{source}`: use `redis` (or `values` / `file` without `source`)"),
                    );
                    continue;
                }
                if seg.values.is_some() || seg.file.is_some() {
                    self.fail(
                        path.clone(),
                        "a Redis segment takes `url` and `key`, not `values` or `file`",
                    );
                    continue;
                }
                let url = match &seg.url {
                    Some(u) => self.redis_url(&format!("{path}.url"), u),
                    None => {
                        self.fail(
                            format!("{path}.url"),
                            "a Redis segment needs `url`, e.g. redis://127.0.0.1:6379",
                        );
                        None
                    }
                };
                let key = seg.key.clone().filter(|k| !k.is_empty());
                if key.is_none() {
                    self.fail(
                        format!("{path}.key"),
                        "a Redis segment needs `key`: the set holding the members",
                    );
                }
                let refresh = self.duration_or(
                    &format!("{path}.refresh"),
                    seg.refresh.as_deref(),
                    Duration::from_secs(5),
                );
                let max_staleness = self.duration_or(
                    &format!("{path}.max_staleness"),
                    seg.max_staleness.as_deref(),
                    Duration::from_secs(300),
                );
                if let (Some(url), Some(key), Some(refresh), Some(max_staleness)) =
                    (url, key, refresh, max_staleness)
                {
                    out.push(Segment {
                        name,
                        members: Vec::new(),
                        source: SegmentSource::Redis {
                            url,
                            key,
                            refresh,
                            max_staleness,
                        },
                    });
                }
                continue;
            }
            for (k, set) in [
                ("url", seg.url.is_some()),
                ("key", seg.key.is_some()),
                ("refresh", seg.refresh.is_some()),
                ("max_staleness", seg.max_staleness.is_some()),
            ] {
                if set {
                    self.fail(
                        format!("{path}.{k}"),
                        format!("`{k}` is only used with `source: redis`"),
                    );
                }
            }
            match (seg.values, seg.file) {
                (Some(values), None) => out.push(Segment {
                    name,
                    members: values,
                    source: SegmentSource::Static,
                }),
                (None, Some(file)) => {
                    let full = self.base_dir.join(&file);
                    match std::fs::read_to_string(&full) {
                        Ok(text) => out.push(Segment {
                            name,
                            members: parse_member_file(&text),
                            source: SegmentSource::File(full),
                        }),
                        Err(e) => self.fail(
                            format!("{path}.file"),
                            format!("cannot read {}: {e}", full.display()),
                        ),
                    }
                }
                _ => self.fail(
                    path,
                    "a segment needs exactly one of `values` (a list) or `file` (one member per line)",
                ),
            }
        }
        out
    }
}

fn parse_member_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

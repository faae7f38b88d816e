//! Small helpers shared by the modules.

/// FNV-1a 64-bit, hex encoded. Stable across Rust versions and platforms,
/// unlike `DefaultHasher`, so stored hashes stay comparable.
pub(crate) fn fnv1a64_hex(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The candidate closest to `target`, if it is close enough to be a plausible typo.
pub(crate) fn did_you_mean<'a, I>(target: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = &'a str>,
{
    let t = target.to_lowercase();
    let max = (target.chars().count() / 3).max(1);
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = strsim::damerau_levenshtein(&t, &c.to_lowercase());
        if d <= max && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c.to_string())
}

/// `"; did you mean `x`?"` or the empty string.
pub(crate) fn suggestion<'a, I>(target: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    match did_you_mean(target, candidates) {
        Some(s) => format!("; did you mean `{s}`?"),
        None => String::new(),
    }
}

/// Maps byte offsets to 1-based (line, column-in-chars).
pub(crate) struct LineIndex<'a> {
    src: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(src: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { src, line_starts }
    }

    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.src.len());
        // Never split a UTF-8 sequence: back up to a char boundary.
        while !self.src.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let col = self.src[self.line_starts[line]..offset].chars().count() + 1;
        (line + 1, col)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_chars() {
        let idx = LineIndex::new("ab\nçd = 1\n");
        assert_eq!(idx.line_col(0), (1, 1));
        assert_eq!(idx.line_col(3), (2, 1));
        // 'ç' is two bytes but one column.
        assert_eq!(idx.line_col(5), (2, 2));
        assert_eq!(idx.line_col(100), (3, 1));
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("shedule", ["schedule", "start_date"]),
            Some("schedule".into())
        );
        assert_eq!(did_you_mean("zzzzzz", ["schedule"]), None);
        assert_eq!(fnv1a64_hex(b""), "cbf29ce484222325");
    }
}

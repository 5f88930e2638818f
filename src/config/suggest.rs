//! "Did you mean …?": the known word closest to a misspelt one, by edit distance. A leaf: it
//! uses nothing else of `config`.

/// The candidate closest to `word` (case aside), when it is close enough to be a typo: at most
/// one edit in four characters, never more than three, and never all of the word. `None` when
/// nothing is that close.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_lowercase();
    let len = word.chars().count();
    let limit = (len / 4).clamp(1, 3).min(len.saturating_sub(1));
    candidates
        .into_iter()
        .map(|candidate| (distance(&word, &candidate.to_lowercase()), candidate))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, candidate)| candidate)
}

/// `; did you mean `x`?` for a key, or an empty string when no key is close.
pub fn key_hint<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(word, candidates)
        .map(|c| format!("; did you mean `{c}`?"))
        .unwrap_or_default()
}

/// `; did you mean "x"?` for a value, or an empty string when no value is close.
pub fn value_hint<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(word, candidates)
        .map(|c| format!("; did you mean \"{c}\"?"))
        .unwrap_or_default()
}

/// Levenshtein distance, with a swap of two neighbours counted as one edit.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows: two back (for swaps), the last, and the one being filled.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut last: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut row = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            row[j] = (last[j] + 1).min(row[j - 1] + 1).min(last[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut last, row);
    }
    last[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_word_and_strangers_find_none() {
        let keys = ["ping_interval", "pong_timeout", "backoff_max"];
        assert_eq!(closest("ping_intervall", keys), Some("ping_interval"));
        assert_eq!(closest("pong_tiemout", keys), Some("pong_timeout"));
        assert_eq!(closest("colour", keys), None);
        let events = ["DeviceCommand", "Reservation", "Resource", "PriceUpdate"];
        assert_eq!(closest("DeviceComand", events), Some("DeviceCommand"));
        assert_eq!(closest("devicecommand", events), Some("DeviceCommand"));
        assert_eq!(closest("Kafka", events), None);
        assert_eq!(
            closest("x", ["a", "b"]),
            None,
            "one letter is no typo of another"
        );
        assert_eq!(
            closest("alway", ["always", "interval", "never"]),
            Some("always")
        );
        assert_eq!(
            closest("htp", ["stdout", "file", "http", "nats"]),
            Some("http")
        );
    }

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("ab", "ba"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("same", "same"), 0);
    }
}

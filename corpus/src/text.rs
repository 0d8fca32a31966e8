//! Text normalization shared by dedup and decontamination: lowercase alphanumeric words and
//! hashed word n-grams. Stable across runs (xxh3 with fixed seeds), so signatures and n-gram
//! sets mean the same thing in every process.

use std::borrow::Cow;

use twox_hash::XxHash3_64;

/// The words of `text`: maximal runs of alphanumeric characters, lowercased. Punctuation and
/// LaTeX markup separate words, so `$48$,` and `48` are the same word.
pub fn normalized_words(text: &str) -> impl Iterator<Item = Cow<'_, str>> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            if w.chars().any(char::is_uppercase) {
                Cow::Owned(w.to_lowercase())
            } else {
                Cow::Borrowed(w)
            }
        })
}

/// Hashes of every run of `n` consecutive words (none when the text has fewer words).
pub fn word_ngram_hashes(text: &str, n: usize) -> Vec<u64> {
    let words: Vec<u64> = normalized_words(text)
        .map(|w| XxHash3_64::oneshot(w.as_bytes()))
        .collect();
    if n == 0 || words.len() < n {
        return Vec::new();
    }
    words.windows(n).map(combine).collect()
}

/// Order-sensitive combination of word hashes into one n-gram hash.
fn combine(words: &[u64]) -> u64 {
    words.iter().fold(0x243f_6a88_85a3_08d3u64, |h, &w| {
        (h.rotate_left(23) ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    })
}

/// Appends `text` lowercased with every whitespace run collapsed to one space and the ends
/// trimmed: the form exact deduplication compares.
pub fn write_normalized(text: &str, out: &mut String) {
    let mut pending_space = false;
    let start = out.len();
    for ch in text.chars() {
        if ch.is_whitespace() {
            pending_space = out.len() > start;
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        if ch.is_ascii() {
            out.push(ch.to_ascii_lowercase());
        } else {
            out.extend(ch.to_lowercase());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_lowercase_alphanumeric_runs() {
        let words: Vec<_> = normalized_words("Natalia sold $48$ clips, In APRIL.").collect();
        assert_eq!(words, ["natalia", "sold", "48", "clips", "in", "april"]);
    }

    #[test]
    fn ngrams_need_n_words() {
        assert_eq!(word_ngram_hashes("a b c", 4).len(), 0);
        assert_eq!(word_ngram_hashes("a b c d e", 4).len(), 2);
        assert_eq!(
            word_ngram_hashes("A, b c D", 4),
            word_ngram_hashes("a b  c d", 4)
        );
        assert_ne!(
            word_ngram_hashes("a b c d", 4),
            word_ngram_hashes("b a c d", 4)
        );
    }

    #[test]
    fn normalized_text_collapses_whitespace() {
        let mut s = String::new();
        write_normalized("  Hello\n\n  World\t!  ", &mut s);
        assert_eq!(s, "hello world !");
    }
}

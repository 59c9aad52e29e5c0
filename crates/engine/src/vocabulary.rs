//! Tokenizers and the vocabulary a text dataset stores and its models copy.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::InvalidField;

pub const UNKNOWN: &str = "<unk>";

/// How text maps to ids. Raw-id datasets have none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Vocabulary {
    /// One id per character; `tokens[0]` is `<unk>`, the rest ordered by
    /// corpus frequency (ties by code point).
    Char { tokens: Vec<String> },
    /// One id per byte of the UTF-8 encoding.
    Byte,
}

/// Character frequencies of a corpus, fed piece by piece (an upload's first
/// pass), so the corpus never has to be in memory at once.
#[derive(Clone, Debug)]
pub struct CharCounts {
    ascii: Box<[u64; 128]>,
    other: HashMap<char, u64>,
}

impl Default for CharCounts {
    fn default() -> Self {
        Self {
            ascii: Box::new([0; 128]),
            other: HashMap::new(),
        }
    }
}

impl CharCounts {
    pub fn add(&mut self, text: &str) {
        for ch in text.chars() {
            self.add_char(ch);
        }
    }

    pub fn add_char(&mut self, ch: char) {
        match self.ascii.get_mut(ch as usize) {
            Some(n) => *n += 1,
            None => *self.other.entry(ch).or_default() += 1,
        }
    }

    /// Distinct characters seen so far.
    pub fn distinct(&self) -> usize {
        self.ascii.iter().filter(|&&n| n > 0).count() + self.other.len()
    }

    /// Most frequent first, ties by code point.
    fn by_frequency(self) -> Vec<(char, u64)> {
        let mut all: Vec<(char, u64)> = self
            .ascii
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(c, &n)| (char::from(c as u8), n))
            .chain(self.other)
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all
    }
}

/// Text -> ids for one vocabulary, built once and reused for a whole corpus.
pub enum Encoder {
    Char {
        ascii: Box<[u32; 128]>,
        other: HashMap<char, u32>,
    },
    Byte,
}

impl Encoder {
    /// Appends the ids of `text` to `out`; unknown characters become
    /// `<unk>` (id 0).
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        match self {
            Encoder::Char { ascii, other } => out.extend(text.chars().map(|c| {
                ascii
                    .get(c as usize)
                    .copied()
                    .unwrap_or_else(|| other.get(&c).copied().unwrap_or(0))
            })),
            Encoder::Byte => out.extend(text.bytes().map(u32::from)),
        }
    }
}

impl Vocabulary {
    /// Builds a char vocabulary from a corpus; `max_size` (0 = none) keeps
    /// the most frequent characters, `<unk>` included.
    pub fn char_from_corpus(text: &str, max_size: usize) -> Self {
        let mut counts = CharCounts::default();
        counts.add(text);
        Self::char_from_counts(counts, max_size)
    }

    /// As `char_from_corpus`, from counts gathered piece by piece.
    pub fn char_from_counts(counts: CharCounts, max_size: usize) -> Self {
        let by_freq = counts.by_frequency();
        let keep = if max_size == 0 {
            by_freq.len()
        } else {
            max_size.saturating_sub(1)
        };
        let mut tokens = vec![UNKNOWN.to_string()];
        tokens.extend(by_freq.into_iter().take(keep).map(|(c, _)| c.to_string()));
        Vocabulary::Char { tokens }
    }

    pub fn encoder(&self) -> Encoder {
        match self {
            Vocabulary::Char { tokens } => {
                let mut ascii = Box::new([0u32; 128]);
                let mut other = HashMap::new();
                for (i, t) in tokens.iter().enumerate().skip(1) {
                    let mut chars = t.chars();
                    if let (Some(c), None) = (chars.next(), chars.next()) {
                        match ascii.get_mut(c as usize) {
                            Some(slot) => *slot = i as u32,
                            None => {
                                other.insert(c, i as u32);
                            }
                        }
                    }
                }
                Encoder::Char { ascii, other }
            }
            Vocabulary::Byte => Encoder::Byte,
        }
    }

    pub fn size(&self) -> usize {
        match self {
            Vocabulary::Char { tokens } => tokens.len(),
            Vocabulary::Byte => 256,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Vocabulary::Char { .. } => "char",
            Vocabulary::Byte => "byte",
        }
    }

    /// Text -> ids. Unknown characters map to `<unk>` (id 0).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len());
        self.encoder().encode_into(text, &mut out);
        out
    }

    /// The text of one id (`<unk>` for unknown; bytes that are not valid
    /// UTF-8 alone show as U+FFFD).
    pub fn token_text(&self, id: u32) -> String {
        match self {
            Vocabulary::Char { tokens } => tokens
                .get(id as usize)
                .cloned()
                .unwrap_or_else(|| UNKNOWN.to_string()),
            Vocabulary::Byte => String::from_utf8_lossy(&[id as u8]).into_owned(),
        }
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Vocabulary::Char { .. } => ids.iter().map(|&i| self.token_text(i)).collect(),
            Vocabulary::Byte => {
                let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
        }
    }
}

/// Checks every id is below `vocab_size`, naming the first offender.
pub fn check_ids(field: &str, ids: &[u32], vocab_size: usize) -> Result<(), InvalidField> {
    if let Some((pos, id)) = ids
        .iter()
        .enumerate()
        .find(|(_, &id)| id as usize >= vocab_size)
    {
        return Err(InvalidField::new(
            format!("{field}[{pos}]"),
            format!("must be < vocab size {vocab_size}, got {id}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_vocabulary_orders_by_frequency_and_round_trips() {
        let v = Vocabulary::char_from_corpus("abbccc", 0);
        assert_eq!(
            v,
            Vocabulary::Char {
                tokens: vec!["<unk>".into(), "c".into(), "b".into(), "a".into()]
            }
        );
        assert_eq!(v.encode("cab!"), vec![1, 3, 2, 0]);
        assert_eq!(v.decode(&[1, 3, 2]), "cab");
        let small = Vocabulary::char_from_corpus("abbccc", 2);
        assert_eq!(small.size(), 2);
        assert_eq!(small.encode("ab"), vec![0, 0]);
    }

    #[test]
    fn counts_fed_in_pieces_give_the_same_vocabulary() {
        let text = "naïve café, ça va? 日本語 ok";
        let mut counts = CharCounts::default();
        for piece in ["naïve c", "afé, ça va? 日", "本語 ok"] {
            counts.add(piece);
        }
        assert_eq!(counts.distinct(), 17);
        let v = Vocabulary::char_from_counts(counts, 0);
        assert_eq!(v, Vocabulary::char_from_corpus(text, 0));
        assert_eq!(v.decode(&v.encode(text)), text);
        assert_eq!(v.encode("é日")[0], v.encode("café")[3]);
    }

    #[test]
    fn out_of_range_id_is_named_with_its_position() {
        let err = check_ids("ids", &[1, 2, 9], 5).unwrap_err();
        assert_eq!(err.to_string(), "ids[2] must be < vocab size 5, got 9");
    }
}

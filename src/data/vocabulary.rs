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

impl Vocabulary {
    /// Builds a char vocabulary from a corpus; `max_size` (0 = none) keeps
    /// the most frequent characters, `<unk>` included.
    pub fn char_from_corpus(text: &str, max_size: usize) -> Self {
        let mut counts: HashMap<char, u64> = HashMap::new();
        for ch in text.chars() {
            *counts.entry(ch).or_default() += 1;
        }
        let mut by_freq: Vec<(char, u64)> = counts.into_iter().collect();
        by_freq.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let keep = if max_size == 0 {
            by_freq.len()
        } else {
            max_size.saturating_sub(1)
        };
        let mut tokens = vec![UNKNOWN.to_string()];
        tokens.extend(by_freq.into_iter().take(keep).map(|(c, _)| c.to_string()));
        Vocabulary::Char { tokens }
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
        match self {
            Vocabulary::Char { tokens } => {
                let index: HashMap<char, u32> = tokens
                    .iter()
                    .enumerate()
                    .skip(1)
                    .filter_map(|(i, t)| Some((t.chars().next()?, i as u32)))
                    .collect();
                text.chars()
                    .map(|c| index.get(&c).copied().unwrap_or(0))
                    .collect()
            }
            Vocabulary::Byte => text.bytes().map(u32::from).collect(),
        }
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
    fn out_of_range_id_is_named_with_its_position() {
        let err = check_ids("ids", &[1, 2, 9], 5).unwrap_err();
        assert_eq!(err.to_string(), "ids[2] must be < vocab size 5, got 9");
    }
}

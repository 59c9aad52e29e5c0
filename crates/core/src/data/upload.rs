//! Streamed uploads: the client's bytes go to staged files chunk by chunk,
//! with memory bounded by the chunk size, never by the corpus. A dataset
//! exists only once `Upload::finish` has validated everything and committed
//! it; dropping an `Upload` (the client went away, a chunk was bad) removes
//! its staged files.
//!
//! - raw ids: little-endian u32s, checked against the declared vocabulary
//!   and written straight to the token file;
//! - byte tokenizer: UTF-8 checked, one id per byte, written straight to the
//!   token file;
//! - char tokenizer: two passes. While the stream arrives its UTF-8 is
//!   checked, its characters counted and its bytes staged; at the end the
//!   vocabulary is built from the counts and the staged text is read back
//!   in blocks and encoded to the token file.
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use tempfile::NamedTempFile;

use super::datasets::{Datasets, Prepared, TokenBlob, PREVIEW_TOKENS};
use super::vocabulary::{CharCounts, Encoder, Vocabulary};
use super::{DataError, TokenizerKind};
use crate::error::{check_name, check_range, InvalidField};
use crate::store::StoreError;

/// How much text is encoded at a time, so the ids of one chunk never sit in
/// memory at once.
const ENCODE_BLOCK: usize = 64 << 10;
/// Read size of the char tokenizer's second pass.
const READ_BLOCK: usize = 1 << 20;

/// The first message of an upload.
#[derive(Clone, Debug)]
pub struct UploadHeader {
    pub name: String,
    pub tokenizer: TokenizerKind,
    /// Raw ids: the declared vocabulary size. Else 0.
    pub vocab_size: usize,
    /// Char tokenizer: at most this many ids, `<unk>` included; 0 = no limit.
    pub max_vocab_size: usize,
    /// Char tokenizer: tokenize with this vocabulary (another dataset's or
    /// a model's) instead of one built from the text.
    pub vocabulary: Option<Vocabulary>,
}

fn io(e: std::io::Error) -> DataError {
    DataError::Store(StoreError::Io(e))
}

fn bad_utf8(offset: u64) -> DataError {
    InvalidField::new(
        "chunks",
        format!("must be UTF-8 text: invalid or truncated byte sequence at byte offset {offset}"),
    )
    .into()
}

/// Checks UTF-8 arriving in pieces split at any byte, carrying an
/// incomplete character over to the next piece.
#[derive(Default)]
pub struct Utf8Stream {
    pending: [u8; 4],
    pending_len: usize,
    /// Bytes fed so far.
    offset: u64,
}

/// Length of the UTF-8 sequence a lead byte starts.
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

impl Utf8Stream {
    /// Validates the next piece. Returns the character that the bytes
    /// carried over from the last piece completed, if any, and the rest of
    /// this piece's whole characters; `Err` holds the stream offset of the
    /// first invalid sequence.
    pub fn feed<'a>(&mut self, bytes: &'a [u8]) -> Result<(Option<char>, &'a str), u64> {
        let piece_start = self.offset;
        self.offset += bytes.len() as u64;
        let mut rest = bytes;
        let mut head = None;
        if self.pending_len > 0 {
            let start = piece_start - self.pending_len as u64;
            let need = sequence_len(self.pending[0]);
            let take = (need - self.pending_len).min(rest.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&rest[..take]);
            self.pending_len += take;
            rest = &rest[take..];
            if self.pending_len < need {
                return Ok((None, ""));
            }
            head = std::str::from_utf8(&self.pending[..need])
                .ok()
                .and_then(|s| s.chars().next());
            if head.is_none() {
                return Err(start);
            }
            self.pending_len = 0;
        }
        let rest_start = self.offset - rest.len() as u64;
        match std::str::from_utf8(rest) {
            Ok(text) => Ok((head, text)),
            Err(e) => {
                let valid = e.valid_up_to();
                if e.error_len().is_some() {
                    return Err(rest_start + valid as u64);
                }
                // An incomplete character at the end: keep it for later.
                let tail = &rest[valid..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len();
                let text = std::str::from_utf8(&rest[..valid]).map_err(|_| rest_start)?;
                Ok((head, text))
            }
        }
    }

    /// The stream ended: an incomplete character is an error at its offset.
    pub fn finish(&self) -> Result<(), u64> {
        match self.pending_len {
            0 => Ok(()),
            n => Err(self.offset - n as u64),
        }
    }
}

/// Writes ids to a staged token file, keeping the count and the preview.
struct TokenWriter {
    out: BufWriter<NamedTempFile>,
    count: u64,
    /// Ids 0 written: `<unk>` for a char vocabulary.
    zeros: u64,
    preview: Vec<u32>,
    ids: Vec<u32>,
    bytes: Vec<u8>,
}

impl TokenWriter {
    fn new(file: NamedTempFile) -> Self {
        Self {
            out: BufWriter::with_capacity(1 << 20, file),
            count: 0,
            zeros: 0,
            preview: Vec::new(),
            ids: Vec::new(),
            bytes: Vec::new(),
        }
    }

    fn write_ids(&mut self, ids: &[u32]) -> Result<(), DataError> {
        if self.preview.len() < PREVIEW_TOKENS {
            let n = (PREVIEW_TOKENS - self.preview.len()).min(ids.len());
            self.preview.extend_from_slice(&ids[..n]);
        }
        self.count += ids.len() as u64;
        self.zeros += ids.iter().filter(|&&id| id == 0).count() as u64;
        self.bytes.clear();
        self.bytes
            .extend(ids.iter().flat_map(|id| id.to_le_bytes()));
        self.out.write_all(&self.bytes).map_err(io)
    }

    /// Encodes text block by block.
    fn write_text(&mut self, encoder: &Encoder, mut text: &str) -> Result<(), DataError> {
        while !text.is_empty() {
            let mut end = text.len().min(ENCODE_BLOCK);
            while !text.is_char_boundary(end) {
                end += 1;
            }
            let mut ids = std::mem::take(&mut self.ids);
            ids.clear();
            encoder.encode_into(&text[..end], &mut ids);
            let written = self.write_ids(&ids);
            self.ids = ids;
            written?;
            text = &text[end..];
        }
        Ok(())
    }

    /// One id per byte.
    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), DataError> {
        for block in bytes.chunks(ENCODE_BLOCK) {
            let mut ids = std::mem::take(&mut self.ids);
            ids.clear();
            ids.extend(block.iter().map(|&b| u32::from(b)));
            let written = self.write_ids(&ids);
            self.ids = ids;
            written?;
        }
        Ok(())
    }

    fn write_char(&mut self, encoder: &Encoder, ch: char) -> Result<(), DataError> {
        let mut buf = [0u8; 4];
        self.write_text(encoder, ch.encode_utf8(&mut buf))
    }

    fn finish(self) -> Result<(NamedTempFile, u64, Vec<u32>), DataError> {
        let file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        Ok((file, self.count, self.preview))
    }
}

enum Body {
    Ids {
        vocab_size: usize,
        carry: [u8; 4],
        carry_len: usize,
        tokens: TokenWriter,
    },
    Byte {
        utf8: Utf8Stream,
        tokens: TokenWriter,
    },
    Char {
        utf8: Utf8Stream,
        counts: CharCounts,
        max_vocab_size: usize,
        /// A vocabulary to reuse rather than build from `counts`.
        given: Option<Vocabulary>,
        raw: BufWriter<NamedTempFile>,
    },
}

/// An upload in progress.
pub struct Upload {
    datasets: Arc<Datasets>,
    name: String,
    received: u64,
    body: Body,
}

impl Upload {
    /// Starts a streamed upload into `datasets`: checks the header, and
    /// stages the data in files that vanish unless `finish` commits them.
    pub fn begin(datasets: Arc<Datasets>, header: UploadHeader) -> Result<Self, DataError> {
        check_name("header.name", &header.name)?;
        let limits = datasets.limits().clone();
        let body = match header.tokenizer {
            TokenizerKind::Ids => {
                check_range(
                    "header.vocab_size",
                    header.vocab_size,
                    2,
                    limits.max_vocab_size,
                )?;
                if header.max_vocab_size != 0 {
                    return Err(InvalidField::new(
                        "header.max_vocab_size",
                        "applies to TOKENIZER_CHAR only; leave it 0 for TOKENIZER_IDS",
                    )
                    .into());
                }
                Body::Ids {
                    vocab_size: header.vocab_size,
                    carry: [0; 4],
                    carry_len: 0,
                    tokens: TokenWriter::new(datasets.store().staging_file()?),
                }
            }
            TokenizerKind::Byte | TokenizerKind::Char => {
                if header.vocab_size != 0 {
                    return Err(InvalidField::new(
                        "header.vocab_size",
                        "applies to TOKENIZER_IDS only; a text dataset's vocabulary comes from its tokenizer (leave it 0)",
                    )
                    .into());
                }
                if header.tokenizer == TokenizerKind::Byte {
                    if header.max_vocab_size != 0 {
                        return Err(InvalidField::new(
                            "header.max_vocab_size",
                            "applies to TOKENIZER_CHAR only; leave it 0 for TOKENIZER_BYTE",
                        )
                        .into());
                    }
                    datasets.check_vocabulary(&Vocabulary::Byte, "header.tokenizer")?;
                    Body::Byte {
                        utf8: Utf8Stream::default(),
                        tokens: TokenWriter::new(datasets.store().staging_file()?),
                    }
                } else {
                    datasets
                        .check_max_vocab_size("header.max_vocab_size", header.max_vocab_size)?;
                    if let Some(given) = &header.vocabulary {
                        datasets.check_vocabulary(given, "header.vocabulary_from")?;
                    }
                    Body::Char {
                        utf8: Utf8Stream::default(),
                        counts: CharCounts::default(),
                        max_vocab_size: header.max_vocab_size,
                        given: header.vocabulary,
                        raw: BufWriter::with_capacity(1 << 20, datasets.store().staging_file()?),
                    }
                }
            }
        };
        // Fail fast on a taken name; `commit` checks again.
        datasets.check_name_free(&header.name)?;
        Ok(Self {
            datasets,
            name: header.name,
            received: 0,
            body,
        })
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Takes the next chunk of the stream.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), DataError> {
        self.received += chunk.len() as u64;
        self.datasets.check_size(self.received)?;
        match &mut self.body {
            Body::Ids {
                vocab_size,
                carry,
                carry_len,
                tokens,
            } => {
                let mut ids = Vec::with_capacity(chunk.len() / 4 + 1);
                let mut rest = chunk;
                if *carry_len > 0 {
                    let take = (4 - *carry_len).min(rest.len());
                    carry[*carry_len..*carry_len + take].copy_from_slice(&rest[..take]);
                    *carry_len += take;
                    rest = &rest[take..];
                    if *carry_len == 4 {
                        ids.push(u32::from_le_bytes(*carry));
                        *carry_len = 0;
                    }
                }
                let whole = rest.chunks_exact(4);
                let tail = whole.remainder();
                ids.extend(whole.map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
                carry[..tail.len()].copy_from_slice(tail);
                *carry_len += tail.len();
                if let Some((i, id)) = ids
                    .iter()
                    .enumerate()
                    .find(|(_, &id)| id as usize >= *vocab_size)
                {
                    let pos = tokens.count + i as u64;
                    return Err(InvalidField::new(
                        format!("tokens[{pos}]"),
                        format!(
                            "must be < header.vocab_size {vocab_size}, got {id} (at byte offset {})",
                            pos * 4
                        ),
                    )
                    .into());
                }
                tokens.write_ids(&ids)
            }
            Body::Byte { utf8, tokens } => {
                utf8.feed(chunk).map_err(bad_utf8)?;
                // One id per byte, whatever the character boundaries.
                tokens.write_bytes(chunk)
            }
            Body::Char {
                utf8, counts, raw, ..
            } => {
                let (head, text) = utf8.feed(chunk).map_err(bad_utf8)?;
                if let Some(ch) = head {
                    counts.add_char(ch);
                }
                counts.add(text);
                raw.write_all(chunk).map_err(io)
            }
        }
    }

    /// Validates the end of the stream and commits the dataset.
    pub fn finish(self) -> Result<super::DatasetRecord, DataError> {
        let datasets = self.datasets;
        let source_bytes = self.received;
        let (tokenizer, vocabulary, vocab_size, tokens, unknown_tokens) = match self.body {
            Body::Ids {
                vocab_size,
                carry_len,
                tokens,
                ..
            } => {
                if carry_len != 0 {
                    return Err(InvalidField::new(
                        "chunks",
                        format!(
                            "must total a multiple of 4 bytes (little-endian u32 ids), got {source_bytes}"
                        ),
                    )
                    .into());
                }
                (TokenizerKind::Ids, None, vocab_size, tokens, 0)
            }
            Body::Byte { utf8, tokens } => {
                utf8.finish().map_err(bad_utf8)?;
                (TokenizerKind::Byte, Some(Vocabulary::Byte), 256, tokens, 0)
            }
            Body::Char {
                utf8,
                counts,
                max_vocab_size,
                given,
                raw,
            } => {
                utf8.finish().map_err(bad_utf8)?;
                let vocab = match given {
                    Some(v) => v,
                    None => Vocabulary::char_from_counts(counts, max_vocab_size),
                };
                datasets.check_vocabulary(&vocab, "header.max_vocab_size")?;
                let mut raw = raw.into_inner().map_err(|e| io(e.into_error()))?;
                raw.as_file_mut().seek(SeekFrom::Start(0)).map_err(io)?;
                let encoder = vocab.encoder();
                let mut tokens = TokenWriter::new(datasets.store().staging_file()?);
                let mut second = Utf8Stream::default();
                let mut block = vec![0u8; READ_BLOCK];
                loop {
                    let n = raw.as_file_mut().read(&mut block).map_err(io)?;
                    if n == 0 {
                        break;
                    }
                    let (head, text) = second.feed(&block[..n]).map_err(bad_utf8)?;
                    if let Some(ch) = head {
                        tokens.write_char(&encoder, ch)?;
                    }
                    tokens.write_text(&encoder, text)?;
                }
                second.finish().map_err(bad_utf8)?;
                let size = vocab.size();
                let unknown = tokens.zeros;
                (TokenizerKind::Char, Some(vocab), size, tokens, unknown)
            }
        };
        let (file, token_count, preview_ids) = tokens.finish()?;
        datasets.commit(
            &self.name,
            Prepared {
                tokenizer,
                vocabulary,
                vocab_size,
                blob: TokenBlob::File(file),
                token_count,
                preview_ids,
                source_bytes,
                unknown_tokens,
                field: "chunks",
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(pieces: &[&[u8]]) -> Result<String, u64> {
        let mut stream = Utf8Stream::default();
        let mut out = String::new();
        for piece in pieces {
            let (head, text) = stream.feed(piece)?;
            out.extend(head);
            out.push_str(text);
        }
        stream.finish()?;
        Ok(out)
    }

    #[test]
    fn utf8_split_anywhere_reassembles() {
        let text = "a é 日本 𝄞 z".as_bytes();
        for i in 0..=text.len() {
            for j in i..=text.len() {
                let got = feed_all(&[&text[..i], &text[i..j], &text[j..]]).unwrap();
                assert_eq!(got.as_bytes(), text, "split at {i}, {j}");
            }
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(feed_all(&bytes).unwrap().as_bytes(), text);
    }

    #[test]
    fn invalid_utf8_is_found_at_its_stream_offset() {
        // A stray continuation byte in the second piece.
        assert_eq!(feed_all(&[b"hello wor", b"ld \x80 more"]), Err(12));
        // A lead byte whose continuation, in the next piece, is not one.
        assert_eq!(feed_all(&[b"abc\xE6\x97", b"x"]), Err(3));
        // Truncated at the end of the stream.
        assert_eq!(feed_all(&[b"abc", b"\xE6\x97"]), Err(3));
        // Bytes that are never UTF-8.
        assert_eq!(feed_all(&[b"\xFF"]), Err(0));
    }
}

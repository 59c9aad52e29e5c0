//! Sliding windows over a token stream: window i is tokens[i..i+w] and its
//! target tokens[i+w] (or, scoring every position, tokens[i+1..=i+w]).
//! Windows are views, never copies of the corpus. [`Streams`] cuts the
//! corpus into parallel streams of consecutive windows (stateful training).

pub struct Windows<'a> {
    tokens: &'a [u32],
    window: usize,
}

impl<'a> Windows<'a> {
    pub fn new(tokens: &'a [u32], window: usize) -> Self {
        Self { tokens, window }
    }

    pub fn len(&self) -> usize {
        self.tokens.len().saturating_sub(self.window)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn window(&self) -> usize {
        self.window
    }

    /// Appends the windows at `indices` to `ids` (row-major [n, w]) and
    /// their targets to `targets`.
    pub fn gather(&self, indices: &[usize], ids: &mut Vec<u32>, targets: &mut Vec<u32>) {
        ids.clear();
        targets.clear();
        for &i in indices {
            ids.extend_from_slice(&self.tokens[i..i + self.window]);
            targets.push(self.tokens[i + self.window]);
        }
    }
}

impl Windows<'_> {
    /// Like [`Windows::gather`], with the target after every position:
    /// `targets` gets tokens[i+1..=i+w] for each window (row-major [n, w]).
    pub fn gather_every(&self, indices: &[usize], ids: &mut Vec<u32>, targets: &mut Vec<u32>) {
        ids.clear();
        targets.clear();
        for &i in indices {
            ids.extend_from_slice(&self.tokens[i..i + self.window]);
            targets.extend_from_slice(&self.tokens[i + 1..i + self.window + 1]);
        }
    }
}

/// The corpus as `streams` parallel streams of equal length, each read as
/// consecutive windows: batch k holds window k of every stream, so a
/// stream's state after batch k is where batch k+1 continues (Keras
/// `stateful=True`). The tail that fills no whole window is left out.
pub struct Streams<'a> {
    tokens: &'a [u32],
    streams: usize,
    window: usize,
    /// Tokens of each stream (the last one is only a target).
    stream_len: usize,
}

impl<'a> Streams<'a> {
    /// Up to `streams` streams: fewer when the corpus has too few tokens
    /// for one window (and its target) in each; none when it has too few
    /// for one.
    pub fn new(tokens: &'a [u32], streams: usize, window: usize) -> Self {
        let windows = tokens.len().saturating_sub(1) / window.max(1);
        let streams = streams.min(windows);
        let stream_len = tokens
            .len()
            .saturating_sub(1)
            .checked_div(streams)
            .unwrap_or(0);
        Self {
            tokens,
            streams,
            window,
            stream_len,
        }
    }

    pub fn streams(&self) -> usize {
        self.streams
    }

    /// Batches of one pass over the streams.
    pub fn batches(&self) -> usize {
        self.stream_len / self.window.max(1)
    }

    /// Batch `k`: window k of every stream in `ids` (row-major [streams,
    /// w]) and its targets: the token after each position with `every`
    /// ([streams, w]), else after the window ([streams]).
    pub fn gather(&self, k: usize, every: bool, ids: &mut Vec<u32>, targets: &mut Vec<u32>) {
        ids.clear();
        targets.clear();
        for s in 0..self.streams {
            let start = s * self.stream_len + k * self.window;
            ids.extend_from_slice(&self.tokens[start..start + self.window]);
            if every {
                targets.extend_from_slice(&self.tokens[start + 1..start + self.window + 1]);
            } else {
                targets.push(self.tokens[start + self.window]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_targets() {
        let tokens = [0, 1, 2, 3, 4];
        let w = Windows::new(&tokens, 3);
        assert_eq!(w.len(), 2);
        let (mut ids, mut targets) = (Vec::new(), Vec::new());
        w.gather(&[1, 0], &mut ids, &mut targets);
        assert_eq!(ids, vec![1, 2, 3, 0, 1, 2]);
        assert_eq!(targets, vec![4, 3]);
        w.gather_every(&[1], &mut ids, &mut targets);
        assert_eq!(
            (ids.clone(), targets.clone()),
            (vec![1, 2, 3], vec![2, 3, 4])
        );
    }

    #[test]
    fn streams_continue_from_batch_to_batch() {
        let tokens: Vec<u32> = (0..14).collect();
        // 13 inputs over 2 streams: 6 each, 3 windows of 2.
        let s = Streams::new(&tokens, 2, 2);
        assert_eq!((s.streams(), s.batches()), (2, 3));
        let (mut ids, mut targets) = (Vec::new(), Vec::new());
        s.gather(0, true, &mut ids, &mut targets);
        assert_eq!(ids, vec![0, 1, 6, 7]);
        assert_eq!(targets, vec![1, 2, 7, 8]);
        s.gather(1, false, &mut ids, &mut targets);
        assert_eq!(ids, vec![2, 3, 8, 9]);
        assert_eq!(targets, vec![4, 10]);
        // Too few tokens for 8 streams of one window: as many as fit.
        assert_eq!(Streams::new(&tokens, 8, 4).streams(), 3);
        assert_eq!(Streams::new(&tokens[..3], 8, 4).batches(), 0);
    }
}

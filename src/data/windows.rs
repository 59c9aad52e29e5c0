//! Sliding windows over a token stream: window i is tokens[i..i+w] and its
//! target tokens[i+w]. Windows are views, never copies of the corpus.

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
    }
}

//! Sums of loss and top-1/top-5 hits over the scored positions of a run's
//! batches or of its validation windows.
use candle_core::{DType, Tensor};

use crate::nn::fused::op::with_f32;

/// Sums of loss, top-1 and top-5 hits over the scored positions of some
/// windows.
#[derive(Default)]
pub(super) struct Tally {
    pub loss_sum: f64,
    pub correct: f64,
    pub top5: f64,
    /// Scored positions.
    pub samples: usize,
    pub windows: usize,
}

impl Tally {
    /// `logits` [N, vocab] of `windows` windows against `targets` [N].
    pub(super) fn add(
        &mut self,
        logits: &Tensor,
        targets: &Tensor,
        loss: f64,
        windows: usize,
    ) -> candle_core::Result<()> {
        let n = targets.dim(0)?;
        self.windows += windows;
        let targets: Vec<u32> = targets.to_dtype(DType::U32)?.to_vec1()?;
        let logits = (logits.to_dtype(DType::F32)?).to_device(&candle_core::Device::Cpu)?;
        let (correct, top5) = with_f32(&logits, |v| Ok(hits(v, &targets)))?;
        self.loss_sum += loss * n as f64;
        self.correct += correct as f64;
        self.top5 += top5 as f64;
        self.samples += n;
        Ok(())
    }

    pub(super) fn loss(&self) -> f64 {
        self.loss_sum / self.samples.max(1) as f64
    }

    pub(super) fn accuracy(&self) -> f64 {
        self.correct / self.samples.max(1) as f64
    }

    pub(super) fn top5_accuracy(&self) -> f64 {
        self.top5 / self.samples.max(1) as f64
    }
}

/// Top-1 and top-5 hits of `logits` [N, V] against `targets` [N], one pass
/// a row: the target is the top 1 when no logit beats it and none before it
/// ties (argmax takes the first maximum), in the top 5 when fewer than 5
/// beat it.
fn hits(logits: &[f32], targets: &[u32]) -> (usize, usize) {
    if targets.is_empty() {
        return (0, 0);
    }
    let v = logits.len() / targets.len();
    let (mut top1, mut top5) = (0, 0);
    for (row, &t) in logits.chunks_exact(v).zip(targets) {
        let t = t as usize;
        let target = row[t];
        let beaten_by = row.iter().filter(|&&x| x > target).count();
        if beaten_by == 0 && !row[..t].contains(&target) {
            top1 += 1;
        }
        if beaten_by < 5 {
            top5 += 1;
        }
    }
    (top1, top5)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    /// The one-pass count agrees with the tensor ops it replaced (argmax,
    /// and counting the logits above the target's), ties included.
    #[test]
    fn hits_match_argmax_and_rank() {
        let (n, v) = (300, 17);
        // 23 values over 17 columns: rows with ties.
        let logits: Vec<f32> = (0..n * v).map(|i| ((i * 7919) % 23) as f32 / 4.0).collect();
        let targets: Vec<u32> = (0..n).map(|i| ((i * 31) % v) as u32).collect();
        let lt = Tensor::from_vec(logits.clone(), (n, v), &Device::Cpu).unwrap();
        let tt = Tensor::from_vec(targets.clone(), n, &Device::Cpu).unwrap();
        let count = |t: Tensor| {
            let sum = t.to_dtype(DType::F32).unwrap().sum_all().unwrap();
            sum.to_scalar::<f32>().unwrap() as usize
        };
        let argmax_hits = count(lt.argmax(1).unwrap().eq(&tt).unwrap());
        let target_logit = lt.gather(&tt.unsqueeze(1).unwrap(), 1).unwrap();
        let beaten_by = lt.broadcast_gt(&target_logit).unwrap();
        let beaten_by = beaten_by.to_dtype(DType::F32).unwrap().sum(1).unwrap();
        let top5_hits = count(beaten_by.lt(5f64).unwrap());
        let (top1, top5) = super::hits(&logits, &targets);
        assert!(top1 > 0 && top1 < n, "the data has hits and misses: {top1}");
        assert!(top5 > top1 && top5 < n, "{top5}");
        assert_eq!((top1, top5), (argmax_hits, top5_hits));
    }
}

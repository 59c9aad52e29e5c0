//! Sums of loss and top-1/top-5 hits over the scored positions of a run's
//! batches or of its validation windows.
use candle_core::{DType, Tensor};

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
        let correct = logits
            .argmax(1)?
            .eq(targets)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        // A target is in the top 5 when fewer than 5 logits beat it.
        let target_logit = logits.gather(&targets.unsqueeze(1)?, 1)?;
        let top5 = logits
            .broadcast_gt(&target_logit)?
            .to_dtype(DType::F32)?
            .sum(1)?
            .lt(5f64)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
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

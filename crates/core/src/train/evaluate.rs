//! Validation: the loss and accuracies of the held-out data, without
//! dropout, at large batches (on the fused inference engine for windows).
use candle_core::{Device, Tensor};

use super::batches::{batch_tensors, carried_logits, stream_tensors, window_logits};
use super::config::LossPositions;
use super::split::Validation;
use super::tally::Tally;
use crate::nn::fused::Engine;
use crate::nn::Network;

pub(super) fn evaluate(
    network: &Network,
    validation: &Validation,
    positions: LossPositions,
    device: &Device,
) -> candle_core::Result<Tally> {
    let mut tally = Tally::default();
    let (mut ids, mut targets) = (Vec::new(), Vec::new());
    let mut score = |logits: Tensor, y: &Tensor, windows: usize| -> candle_core::Result<()> {
        let loss = crate::nn::fused::cross_entropy(&logits, y)?.to_scalar::<f32>()? as f64;
        tally.add(&logits, y, loss, windows)
    };
    match validation {
        Validation::None => {}
        Validation::Windows(windows, indices) => {
            // The inference engine where it runs (f32 on the CPU): no
            // autograd state, fixed-order products, large batches.
            let engine = Engine::new(network)?;
            let every = positions == LossPositions::Every;
            for chunk in indices.chunks(1024) {
                let (x, y) =
                    batch_tensors(windows, chunk, positions, device, &mut ids, &mut targets)?;
                let logits = match &engine {
                    Some(engine) => {
                        let (n, w) = (chunk.len(), windows.window());
                        let logits = engine.logits(&ids, n, w, every);
                        let rows = logits.len() / engine.vocab_size();
                        Tensor::from_vec(logits, (rows, engine.vocab_size()), device)?
                    }
                    None => window_logits(network, &x, positions, None)?,
                };
                score(logits, &y, chunk.len())?;
            }
        }
        Validation::Streams(streams) => {
            let mut carried = None;
            let w = network.spec.window;
            for k in 0..streams.batches() {
                let (x, y) =
                    stream_tensors(streams, k, w, positions, device, &mut ids, &mut targets)?;
                let logits = carried_logits(network, &x, positions, &mut carried, None)?;
                score(logits, &y, streams.streams())?;
            }
        }
    }
    Ok(tally)
}

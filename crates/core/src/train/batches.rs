//! One batch as tensors and its scored logits: windows that start from
//! zeros, or parallel streams that carry the state (truncated BPTT).
use candle_core::{Device, Tensor};

use super::config::LossPositions;
use crate::data::{Streams, Windows};
use crate::nn::{Dropout, LayerState, Network};

pub(super) fn batch_tensors(
    windows: &Windows,
    indices: &[usize],
    positions: LossPositions,
    device: &Device,
    ids: &mut Vec<u32>,
    targets: &mut Vec<u32>,
) -> candle_core::Result<(Tensor, Tensor)> {
    match positions {
        LossPositions::Last => windows.gather(indices, ids, targets),
        LossPositions::Every => windows.gather_every(indices, ids, targets),
    }
    let n = indices.len();
    Ok((
        Tensor::from_slice(ids, (n, windows.window()), device)?,
        Tensor::from_slice(targets, targets.len(), device)?,
    ))
}

/// Batch `k` of `streams` as tensors: ids [S, w], targets [S] or [S*w].
pub(super) fn stream_tensors(
    streams: &Streams,
    k: usize,
    window: usize,
    positions: LossPositions,
    device: &Device,
    ids: &mut Vec<u32>,
    targets: &mut Vec<u32>,
) -> candle_core::Result<(Tensor, Tensor)> {
    streams.gather(k, positions == LossPositions::Every, ids, targets);
    Ok((
        Tensor::from_slice(ids, (streams.streams(), window), device)?,
        Tensor::from_slice(targets, targets.len(), device)?,
    ))
}

/// Logits [N, vocab] of the scored positions, in the targets' order.
pub(super) fn flat_logits(logits: Tensor) -> candle_core::Result<Tensor> {
    match logits.dims() {
        &[b, t, v] => logits.reshape((b * t, v)),
        _ => Ok(logits),
    }
}

/// The scored logits of a batch of windows that each start from zeros.
pub(super) fn window_logits(
    network: &Network,
    x: &Tensor,
    positions: LossPositions,
    dropout: Option<&mut Dropout>,
) -> candle_core::Result<Tensor> {
    match positions {
        LossPositions::Last => network.forward(x, dropout),
        LossPositions::Every => flat_logits(network.forward_every(x, dropout)?),
    }
}

/// The scored logits of a stateful batch from `carried` (zeros when
/// None), which becomes the batch's final state, detached: gradients stop
/// at the batch's start (truncated BPTT).
pub(super) fn carried_logits(
    network: &Network,
    x: &Tensor,
    positions: LossPositions,
    carried: &mut Option<Vec<LayerState>>,
    dropout: Option<&mut Dropout>,
) -> candle_core::Result<Tensor> {
    let every = positions == LossPositions::Every;
    let (logits, states) = network.forward_carried(x, carried.as_deref(), dropout, every)?;
    *carried = Some(
        states
            .into_iter()
            .map(|s| LayerState {
                h: s.h.detach(),
                c: s.c.map(|c| c.detach()),
            })
            .collect(),
    );
    flat_logits(logits)
}

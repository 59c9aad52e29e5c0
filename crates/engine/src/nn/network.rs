//! The whole next-token model: Embedding -> recurrent layers -> Dense.
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::fused;
use super::naming::{self, direction_names, DENSE_BIAS, DENSE_WEIGHT, EMBEDDING};
use super::recurrent::{DirectionWeights, LayerState, RecurrentLayer};
use super::spec::ModelSpec;
use super::NnError;

/// A network over named tensors. Built from `Var`s it trains (the tensors
/// share storage with the variables); built from plain tensors it serves.
#[derive(Clone, Debug)]
pub struct Network {
    pub spec: ModelSpec,
    pub(crate) embedding: Tensor,
    pub(crate) layers: Vec<RecurrentLayer>,
    pub(crate) dense_weight: Tensor,
    pub(crate) dense_bias: Tensor,
}

/// One mask element from one random word: dropped (0) when the `f32` that
/// `rng.random()` makes of the word, its 24 high bits times 2^-24, is below
/// `p`; kept and scaled by 1 / (1 - p) otherwise.
#[derive(Clone, Copy)]
struct MaskScale {
    /// p * 2^24: comparing the integer against it is exact.
    threshold: f32,
    keep: f32,
}

impl MaskScale {
    fn new(p: f32) -> Self {
        Self {
            threshold: p * (1u32 << 24) as f32,
            keep: 1.0 / (1.0 - p),
        }
    }

    fn of(self, word: u32) -> f32 {
        if ((word >> 8) as f32) < self.threshold {
            0.0
        } else {
            self.keep
        }
    }
}

/// Seeded inverted dropout, so training runs are reproducible.
pub struct Dropout {
    rng: ChaCha8Rng,
}

impl Dropout {
    pub fn new(seed: u64) -> Self {
        Self::from_rng(ChaCha8Rng::seed_from_u64(seed))
    }

    pub fn from_rng(rng: ChaCha8Rng) -> Self {
        Self { rng }
    }

    /// The mask for `n` elements, in draw order: 0 with probability `p`,
    /// 1 / (1 - p) otherwise. Draws the random words in bulk; element i
    /// is dropped when the i-th `f32` `rng.random()` would give would be
    /// below `p` (the same 24 high bits, compared as an integer).
    fn mask(&mut self, n: usize, p: f32) -> Vec<f32> {
        let mut words = vec![0u32; n];
        self.rng.fill(&mut words[..]);
        let scale = MaskScale::new(p);
        words.iter().map(|&u| scale.of(u)).collect()
    }

    /// Zeroes each element with probability `p` and scales the rest by
    /// 1 / (1 - p).
    pub fn apply(&mut self, x: &Tensor, p: f32) -> candle_core::Result<Tensor> {
        if p <= 0.0 {
            return Ok(x.clone());
        }
        let mask = self.mask(x.elem_count(), p);
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }

    /// The mask `apply` would draw for a batch-major [B, T, W] tensor, laid
    /// out time-major [T, B, W]; None when `p` is 0 (no draws).
    pub(crate) fn time_major_mask(
        &mut self,
        b: usize,
        t: usize,
        w: usize,
        p: f32,
    ) -> Option<Vec<f32>> {
        if p <= 0.0 {
            return None;
        }
        let keep = 1.0 / (1.0 - p);
        let threshold = p * (1u32 << 24) as f32;
        let mut words = vec![0u32; b * t * w];
        self.rng.fill(&mut words[..]);
        let mut mask = vec![0.0f32; words.len()];
        for (bi, rows) in words.chunks_exact(t * w).enumerate() {
            for (ti, row) in rows.chunks_exact(w).enumerate() {
                let dst = &mut mask[(ti * b + bi) * w..][..w];
                for (m, &u) in dst.iter_mut().zip(row) {
                    *m = if ((u >> 8) as f32) < threshold {
                        0.0
                    } else {
                        keep
                    };
                }
            }
        }
        Some(mask)
    }

    /// The mask `apply` would draw for a tensor of `n` elements; None when
    /// `p` is 0 (no draws).
    pub(crate) fn batch_mask(&mut self, n: usize, p: f32) -> Option<Vec<f32>> {
        (p > 0.0).then(|| self.mask(n, p))
    }
}

impl Network {
    /// Builds the network from tensors named as in a PyTorch state_dict;
    /// every expected tensor must be present with its exact shape, and no
    /// other tensor may be.
    pub fn from_tensors(
        spec: &ModelSpec,
        tensors: &HashMap<String, Tensor>,
    ) -> Result<Self, NnError> {
        let expected = naming::parameter_shapes(spec);
        for (name, shape) in &expected {
            let t = tensors
                .get(name)
                .ok_or_else(|| NnError::MissingTensor(name.clone()))?;
            if t.dims() != shape.as_slice() {
                return Err(NnError::ShapeMismatch {
                    name: name.clone(),
                    expected: shape.clone(),
                    got: t.dims().to_vec(),
                });
            }
        }
        if let Some(extra) = tensors
            .keys()
            .find(|k| !expected.iter().any(|(name, _)| name == *k))
        {
            return Err(NnError::UnexpectedTensor(extra.clone()));
        }
        let get = |name: &str| tensors[name].clone();
        let direction = |layer: usize, reverse: bool| {
            let n = direction_names(layer, reverse);
            DirectionWeights {
                weight_ih: get(&n.weight_ih),
                weight_hh: get(&n.weight_hh),
                bias_ih: get(&n.bias_ih),
                bias_hh: get(&n.bias_hh),
            }
        };
        let layers = spec
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| RecurrentLayer {
                spec: l.clone(),
                forward: direction(i, false),
                reverse: l.bidirectional.then(|| direction(i, true)),
            })
            .collect();
        Ok(Self {
            spec: spec.clone(),
            embedding: get(EMBEDDING),
            layers,
            dense_weight: get(DENSE_WEIGHT),
            dense_bias: get(DENSE_BIAS),
        })
    }

    pub fn device(&self) -> &Device {
        self.embedding.device()
    }

    pub fn dtype(&self) -> candle_core::DType {
        self.embedding.dtype()
    }

    /// `ids`: u32 [B, T] -> logits [B, vocab]. With `dropout`, the spec's
    /// dropout layers are active (training); without, they are identity.
    /// f32 on the CPU runs the fused kernels; anything else the composed
    /// candle ops. Both give the same values and gradients (to rounding)
    /// and, from the same `Dropout`, the same masks.
    pub fn forward(
        &self,
        ids: &Tensor,
        dropout: Option<&mut Dropout>,
    ) -> candle_core::Result<Tensor> {
        if fused::supported(&self.embedding) {
            self.forward_fused(ids, dropout)
        } else {
            self.forward_composed(ids, dropout)
        }
    }

    /// The forward pass from candle tensor ops (any device and dtype).
    pub fn forward_composed(
        &self,
        ids: &Tensor,
        dropout: Option<&mut Dropout>,
    ) -> candle_core::Result<Tensor> {
        self.composed(ids, dropout, false)
    }

    /// Embedding, layers and dense from candle ops: logits [B, vocab] after
    /// the last token, or [B, T, vocab] after every token with `every`
    /// (then every layer returns its whole sequence).
    fn composed(
        &self,
        ids: &Tensor,
        mut dropout: Option<&mut Dropout>,
        every: bool,
    ) -> candle_core::Result<Tensor> {
        let (batch, steps) = ids.dims2()?;
        let mut x = self
            .embedding
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((batch, steps, self.spec.embedding_dim))?;
        if let Some(d) = dropout.as_deref_mut() {
            x = d.apply(&x, self.spec.embedding_dropout)?;
        }
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, i < last || every)?;
            if let Some(d) = dropout.as_deref_mut() {
                x = d.apply(&x, layer.spec.dropout)?;
            }
        }
        self.dense(&x)
    }

    /// The dense layer over [B, W] or [B, T, W].
    fn dense(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let w = self.dense_weight.t()?;
        match x.dims() {
            &[b, t, width] => x
                .reshape((b * t, width))?
                .matmul(&w)?
                .broadcast_add(&self.dense_bias)?
                .reshape((b, t, self.spec.vocab_size)),
            _ => x.matmul(&w)?.broadcast_add(&self.dense_bias),
        }
    }

    /// `ids` u32 [B, T] -> logits [B, T, vocab]: position t predicts the
    /// token after `ids[:, ..=t]` from that prefix alone (every-position
    /// training). A unidirectional model gets every position from one pass;
    /// a bidirectional layer's reverse direction would read the tokens it
    /// predicts, so there each prefix runs on its own.
    pub fn forward_every(
        &self,
        ids: &Tensor,
        dropout: Option<&mut Dropout>,
    ) -> candle_core::Result<Tensor> {
        let fused = fused::supported(&self.embedding);
        self.forward_every_on(ids, dropout, fused)
    }

    /// [`Self::forward_every`] through the fused kernels (`fused`) or candle
    /// ops, whatever the tensors.
    pub fn forward_every_on(
        &self,
        ids: &Tensor,
        mut dropout: Option<&mut Dropout>,
        fused: bool,
    ) -> candle_core::Result<Tensor> {
        if self.is_stateful() {
            return if fused {
                fused::network_forward_every(self, ids, dropout)
            } else {
                self.composed(ids, dropout, true)
            };
        }
        let steps = ids.dim(1)?;
        let mut outs = Vec::with_capacity(steps);
        for t in 1..=steps {
            let prefix = ids.narrow(1, 0, t)?;
            outs.push(if fused {
                self.forward_fused(&prefix, dropout.as_deref_mut())?
            } else {
                self.composed(&prefix, dropout.as_deref_mut(), false)?
            });
        }
        Tensor::stack(&outs, 1)
    }

    /// Stateful training's forward (unidirectional models): logits [B, T,
    /// vocab] (`every`) or [B, vocab], continuing from `states` (zeros when
    /// None), and the states after the last token; fused where supported.
    pub fn forward_carried(
        &self,
        ids: &Tensor,
        states: Option<&[LayerState]>,
        dropout: Option<&mut Dropout>,
        every: bool,
    ) -> candle_core::Result<(Tensor, Vec<LayerState>)> {
        let fused = fused::supported(&self.embedding);
        self.forward_carried_on(ids, states, dropout, every, fused)
    }

    /// [`Self::forward_carried`] through the fused kernels (`fused`) or
    /// candle ops.
    pub fn forward_carried_on(
        &self,
        ids: &Tensor,
        states: Option<&[LayerState]>,
        mut dropout: Option<&mut Dropout>,
        every: bool,
        fused: bool,
    ) -> candle_core::Result<(Tensor, Vec<LayerState>)> {
        if fused {
            return fused::network_forward_carried(self, ids, states, dropout, every);
        }
        let (batch, steps) = ids.dims2()?;
        let mut x = self
            .embedding
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((batch, steps, self.spec.embedding_dim))?;
        if let Some(d) = dropout.as_deref_mut() {
            x = d.apply(&x, self.spec.embedding_dropout)?;
        }
        let last = self.layers.len() - 1;
        let mut out_states = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let (y, state) = layer.forward_from(&x, states.map(|s| &s[i]), i < last || every)?;
            x = y;
            if let Some(d) = dropout.as_deref_mut() {
                x = d.apply(&x, layer.spec.dropout)?;
            }
            out_states.push(state);
        }
        Ok((self.dense(&x)?, out_states))
    }

    /// The forward pass through the fused kernels (f32, CPU): the whole
    /// network as one custom op.
    pub fn forward_fused(
        &self,
        ids: &Tensor,
        dropout: Option<&mut Dropout>,
    ) -> candle_core::Result<Tensor> {
        fused::network_forward(self, ids, dropout)
    }
}

impl Network {
    /// Whether the model can carry state from call to call (no
    /// bidirectional layer).
    pub fn is_stateful(&self) -> bool {
        self.layers.iter().all(|l| l.reverse.is_none())
    }

    /// Inference over `ids` [B, T] continuing from `states` (one per layer;
    /// zeros when None): logits [B, vocab] after the last token, and the
    /// states after it. Unidirectional models only.
    pub fn forward_from(
        &self,
        ids: &Tensor,
        states: Option<&[LayerState]>,
    ) -> candle_core::Result<(Tensor, Vec<LayerState>)> {
        let (batch, steps) = ids.dims2()?;
        let mut x = self
            .embedding
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((batch, steps, self.spec.embedding_dim))?;
        let last = self.layers.len() - 1;
        let mut out_states = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let (y, state) = layer.forward_from(&x, states.map(|s| &s[i]), i < last)?;
            x = y;
            out_states.push(state);
        }
        let logits = x
            .matmul(&self.dense_weight.t()?)?
            .broadcast_add(&self.dense_bias)?;
        Ok((logits, out_states))
    }
}

/// Fresh parameters with PyTorch's default initialisation, from a seed:
/// embedding N(0, 1); recurrent tensors U(-1/sqrt(H), 1/sqrt(H)); dense
/// weight and bias U(-1/sqrt(in), 1/sqrt(in)).
pub fn initial_parameters(
    spec: &ModelSpec,
    seed: u64,
    device: &Device,
) -> candle_core::Result<Vec<(String, Tensor)>> {
    use rand_distr::{Distribution, StandardNormal, Uniform};
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for (name, shape) in naming::parameter_shapes(spec) {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name == EMBEDDING {
            (0..n).map(|_| StandardNormal.sample(&mut rng)).collect()
        } else {
            let fan_in = match naming::layer_index(&name) {
                Some(layer) => spec.layers[layer].units,
                None => spec.final_width(),
            };
            let bound = 1.0 / (fan_in as f32).sqrt();
            let dist = Uniform::new_inclusive(-bound, bound).expect("bound is finite");
            (0..n).map(|_| dist.sample(&mut rng)).collect()
        };
        out.push((
            name,
            Tensor::from_vec(values, shape, device)?.to_dtype(DType::F32)?,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_mask_matches_one_draw_per_element() {
        let p = 0.37;
        let mut bulk = Dropout::new(9);
        let mut single = ChaCha8Rng::seed_from_u64(9);
        for n in [1, 7, 64, 1000] {
            let keep = 1.0 / (1.0 - p);
            let want: Vec<f32> = (0..n)
                .map(|_| {
                    if single.random::<f32>() < p {
                        0.0
                    } else {
                        keep
                    }
                })
                .collect();
            assert_eq!(bulk.mask(n, p), want);
        }
    }
}

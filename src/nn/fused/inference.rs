//! Inference without autograd: the network's weights copied once into
//! plain vectors, each batch cut into blocks of rows that run the whole
//! network (embedding, layers, dense, softmax) on one worker, in buffers
//! each worker keeps between calls. Every product sums each row in one
//! fixed order, so a sequence's probabilities are bit-for-bit the same
//! alone or in any batch.
use std::cell::RefCell;

use candle_core::{DType, Result, Tensor};

use super::matmul::small_matmul;
use super::sequence::{self, Dims, Mode, Prepared, State};
use super::{loss::softmax_row, threads};
use crate::nn::spec::Cell;
use crate::nn::Network;

struct Layer {
    cell: Cell,
    units: usize,
    dirs: usize,
    input: usize,
    weights: Prepared,
}

/// A network ready for fused inference on the CPU.
pub struct Engine {
    vocab: usize,
    embedding_dim: usize,
    embedding: Vec<f32>,
    layers: Vec<Layer>,
    /// The dense weight transposed, [W, vocab].
    dense_weight_t: Vec<f32>,
    dense_bias: Vec<f32>,
}

/// Rows a worker runs at a time: small enough that a block's activations
/// stay in cache, large enough for efficient products.
const BLOCK_ROWS: usize = 64;

#[derive(Default)]
struct Scratch {
    input: Vec<f32>,
    state: State,
    last: Vec<f32>,
    logits: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

impl Engine {
    /// Copies the network's weights; None unless they are f32 on the CPU.
    pub fn new(network: &Network) -> Result<Option<Self>> {
        if !network.embedding.device().is_cpu() || network.embedding.dtype() != DType::F32 {
            return Ok(None);
        }
        let mut layers = Vec::new();
        let mut input = network.spec.embedding_dim;
        for layer in &network.layers {
            let params = to_vec(&super::op::pack_parameters(layer)?.detach())?;
            let dims = Dims {
                cell: layer.spec.cell,
                steps: 1,
                batch: 1,
                input,
                units: layer.spec.units,
                dirs: layer.spec.directions(),
            };
            layers.push(Layer {
                cell: layer.spec.cell,
                units: layer.spec.units,
                dirs: layer.spec.directions(),
                input,
                weights: sequence::prepare(&dims, &params),
            });
            input = layer.spec.output_width();
        }
        Ok(Some(Self {
            vocab: network.spec.vocab_size,
            embedding_dim: network.spec.embedding_dim,
            embedding: to_vec(&network.embedding.detach())?,
            layers,
            dense_weight_t: to_vec(&network.dense_weight.detach().t()?.contiguous()?)?,
            dense_bias: to_vec(&network.dense_bias.detach())?,
        }))
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Next-token probabilities [batch, vocab] for `ids` [batch, steps]
    /// (row-major), every id below the vocabulary size.
    pub fn probabilities(&self, ids: &[u32], batch: usize, steps: usize) -> Vec<f32> {
        assert_eq!(ids.len(), batch * steps, "ids are [batch, steps]");
        assert!(steps > 0, "sequences are not empty");
        let v = self.vocab;
        let mut out = vec![0.0f32; batch * v];
        let blocks = batch.div_ceil(BLOCK_ROWS);
        // Blocks spread over the workers; a single block (a small batch)
        // spreads its large products instead.
        let mode = Mode::Infer {
            threads: if blocks == 1 { threads::threads() } else { 1 },
        };
        let out_ptr = OutPtr(out.as_mut_ptr());
        threads::for_each(blocks, |i| {
            let r0 = i * BLOCK_ROWS;
            let rows = BLOCK_ROWS.min(batch - r0);
            // SAFETY: blocks write disjoint rows of `out`.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(r0 * v), rows * v) };
            SCRATCH.with(|s| {
                self.run_block(
                    &ids[r0 * steps..(r0 + rows) * steps],
                    rows,
                    steps,
                    mode,
                    &mut s.borrow_mut(),
                    dst,
                )
            });
        });
        out
    }

    fn run_block(
        &self,
        ids: &[u32],
        rows: usize,
        steps: usize,
        mode: Mode,
        s: &mut Scratch,
        out: &mut [f32],
    ) {
        let e = self.embedding_dim;
        // Time-major embedding lookup.
        s.input.resize(steps * rows * e, 0.0);
        for r in 0..rows {
            for t in 0..steps {
                let id = ids[r * steps + t] as usize;
                s.input[(t * rows + r) * e..][..e].copy_from_slice(&self.embedding[id * e..][..e]);
            }
        }
        let mut dims = None;
        for layer in &self.layers {
            let d = Dims {
                cell: layer.cell,
                steps,
                batch: rows,
                input: layer.input,
                units: layer.units,
                dirs: layer.dirs,
            };
            sequence::forward(&d, &s.input, &layer.weights, &mut s.state, mode);
            std::mem::swap(&mut s.input, &mut s.state.h);
            dims = Some(d);
        }
        let d = dims.expect("a network has at least one layer");
        sequence::last_states(&d, &s.input, &mut s.last);
        let (v, w) = (self.vocab, d.width());
        s.logits.resize(rows * v, 0.0);
        for row in s.logits.chunks_exact_mut(v) {
            row.copy_from_slice(&self.dense_bias);
        }
        // SAFETY: shapes as named; buffers distinct.
        unsafe {
            small_matmul(
                rows,
                v,
                w,
                s.last.as_ptr(),
                w,
                1,
                self.dense_weight_t.as_ptr(),
                v,
                s.logits.as_mut_ptr(),
                v,
                true,
            );
            for r in 0..rows {
                softmax_row(s.logits[r * v..].as_ptr(), out[r * v..].as_mut_ptr(), v);
            }
        }
    }
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: workers write disjoint rows.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}
impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

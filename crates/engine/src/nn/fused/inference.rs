//! Inference without autograd: the network's weights copied once into
//! plain vectors, each batch cut into blocks of rows that run the whole
//! network (embedding, layers, dense, softmax) on one worker, in buffers
//! each worker keeps between calls. Every product sums each row in one
//! fixed order, so a sequence's probabilities are bit-for-bit the same
//! alone or in any batch.
use std::cell::RefCell;

use candle_core::{DType, Result, Tensor};

use super::matmul::small_matmul;
use super::sequence::{self, Dims, Initial, Mode, Prepared, State};
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

impl Layer {
    fn dims(&self, steps: usize, rows: usize) -> Dims {
        Dims {
            cell: self.cell,
            steps,
            batch: rows,
            input: self.input,
            units: self.units,
            dirs: self.dirs,
        }
    }
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

/// One sequence's recurrent state in one layer, carried between calls
/// (sessions, generation): h, and c for LSTMs, [H] each.
#[derive(Clone, Debug, PartialEq)]
pub struct StepState {
    pub h: Vec<f32>,
    pub c: Option<Vec<f32>>,
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
        self.run(ids, batch, steps, Output::Probabilities)
    }

    /// Logits for `ids` [batch, steps]: [batch, vocab] after the last token,
    /// or with `every`, [batch * steps, vocab] after each token (row
    /// `r * steps + t`), as the training network's `forward_every` gives
    /// them: from one pass when every layer is unidirectional; else each
    /// prefix on its own, as a reverse direction would otherwise read the
    /// tokens it predicts.
    pub fn logits(&self, ids: &[u32], batch: usize, steps: usize, every: bool) -> Vec<f32> {
        if !every || self.is_stateful() {
            return self.run(ids, batch, steps, Output::Logits { every });
        }
        let v = self.vocab;
        let mut out = vec![0.0f32; batch * steps * v];
        let mut prefix = Vec::with_capacity(batch * steps);
        for t in 1..=steps {
            prefix.clear();
            for row in ids.chunks_exact(steps) {
                prefix.extend_from_slice(&row[..t]);
            }
            let last = self.run(&prefix, batch, t, Output::Logits { every: false });
            for (r, logits) in last.chunks_exact(v).enumerate() {
                out[(r * steps + t - 1) * v..][..v].copy_from_slice(logits);
            }
        }
        out
    }

    fn run(&self, ids: &[u32], batch: usize, steps: usize, output: Output) -> Vec<f32> {
        assert_eq!(ids.len(), batch * steps, "ids are [batch, steps]");
        assert!(steps > 0, "sequences are not empty");
        let v = self.vocab * output.positions(steps);
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
                    (mode, output),
                    &mut s.borrow_mut(),
                    dst,
                )
            });
        });
        out
    }

    /// Whether every layer is unidirectional, so a state can be carried.
    pub fn is_stateful(&self) -> bool {
        self.layers.iter().all(|l| l.dirs == 1)
    }

    /// Next-token probabilities [vocab] for one sequence `ids`, continuing
    /// from `states` (one per layer; zeros when None), and the states after
    /// its last token. Feeding a sequence in pieces gives bit-for-bit the
    /// probabilities of feeding it whole. Unidirectional networks only.
    pub fn step(&self, ids: &[u32], states: Option<&[StepState]>) -> (Vec<f32>, Vec<StepState>) {
        assert!(!ids.is_empty(), "sequences are not empty");
        assert!(
            self.is_stateful(),
            "only unidirectional networks carry state"
        );
        if let Some(states) = states {
            assert_eq!(states.len(), self.layers.len(), "one state per layer");
        }
        let mode = Mode::Infer {
            threads: threads::threads(),
        };
        let steps = ids.len();
        let mut probs = vec![0.0f32; self.vocab];
        let carried = SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            self.embed(ids, 1, steps, s);
            let mut carried = Vec::with_capacity(self.layers.len());
            for (i, layer) in self.layers.iter().enumerate() {
                let d = layer.dims(steps, 1);
                let init = states.map(|st| Initial {
                    h: &st[i].h,
                    c: st[i].c.as_deref(),
                });
                sequence::forward_from(&d, &s.input, &layer.weights, &mut s.state, mode, init);
                // The last step's h, and its c (the first H of the extra
                // block).
                let last = steps - 1;
                carried.push(StepState {
                    h: s.state.h[last * layer.units..][..layer.units].to_vec(),
                    c: (layer.cell == Cell::Lstm).then(|| {
                        s.state.extra[0][last * d.extra_width()..][..layer.units].to_vec()
                    }),
                });
                std::mem::swap(&mut s.input, &mut s.state.h);
            }
            let last = self
                .layers
                .last()
                .expect("a network has at least one layer");
            self.head(&last.dims(steps, 1), s, &mut probs);
            carried
        });
        (probs, carried)
    }

    fn run_block(
        &self,
        ids: &[u32],
        rows: usize,
        steps: usize,
        (mode, output): (Mode, Output),
        s: &mut Scratch,
        out: &mut [f32],
    ) {
        self.embed(ids, rows, steps, s);
        for layer in &self.layers {
            let d = layer.dims(steps, rows);
            sequence::forward(&d, &s.input, &layer.weights, &mut s.state, mode);
            std::mem::swap(&mut s.input, &mut s.state.h);
        }
        let last = self
            .layers
            .last()
            .expect("a network has at least one layer");
        let d = last.dims(steps, rows);
        match output {
            Output::Probabilities => self.head(&d, s, out),
            Output::Logits { every: false } => {
                sequence::last_states(&d, &s.input, &mut s.last);
                self.dense(rows, d.width(), &s.last, out);
            }
            Output::Logits { every: true } => {
                // The last layer's every state, time-major: logits row
                // t * rows + r, reordered batch-major.
                let mut logits = std::mem::take(&mut s.logits);
                logits.resize(steps * rows * self.vocab, 0.0);
                self.dense(steps * rows, d.width(), &s.input, &mut logits);
                let v = self.vocab;
                for r in 0..rows {
                    for t in 0..steps {
                        out[(r * steps + t) * v..][..v]
                            .copy_from_slice(&logits[(t * rows + r) * v..][..v]);
                    }
                }
                s.logits = logits;
            }
        }
    }

    /// `out` [rows, vocab] = `x` [rows, w] W_dense^T + bias.
    fn dense(&self, rows: usize, w: usize, x: &[f32], out: &mut [f32]) {
        let v = self.vocab;
        for row in out.chunks_exact_mut(v) {
            row.copy_from_slice(&self.dense_bias);
        }
        // SAFETY: shapes as named; buffers distinct.
        unsafe {
            small_matmul(
                rows,
                v,
                w,
                x.as_ptr(),
                w,
                1,
                self.dense_weight_t.as_ptr(),
                v,
                out.as_mut_ptr(),
                v,
                true,
            );
        }
    }

    /// Time-major embedding lookup of `ids` [rows, steps] into `s.input`.
    fn embed(&self, ids: &[u32], rows: usize, steps: usize, s: &mut Scratch) {
        let e = self.embedding_dim;
        s.input.resize(steps * rows * e, 0.0);
        for r in 0..rows {
            for t in 0..steps {
                let id = ids[r * steps + t] as usize;
                s.input[(t * rows + r) * e..][..e].copy_from_slice(&self.embedding[id * e..][..e]);
            }
        }
    }

    /// Dense and softmax over the last layer's final states (its output
    /// sequence is in `s.input`), into `out` [rows, vocab].
    fn head(&self, d: &Dims, s: &mut Scratch, out: &mut [f32]) {
        let rows = d.batch;
        sequence::last_states(d, &s.input, &mut s.last);
        let v = self.vocab;
        let mut logits = std::mem::take(&mut s.logits);
        logits.resize(rows * v, 0.0);
        self.dense(rows, d.width(), &s.last, &mut logits);
        s.logits = logits;
        // SAFETY: shapes as named; buffers distinct.
        unsafe {
            for r in 0..rows {
                softmax_row(s.logits[r * v..].as_ptr(), out[r * v..].as_mut_ptr(), v);
            }
        }
    }
}

/// What a batch run writes.
#[derive(Clone, Copy)]
enum Output {
    /// Next-token probabilities after the last token.
    Probabilities,
    /// Logits after the last token, or after each.
    Logits { every: bool },
}

impl Output {
    /// Output rows per sequence.
    fn positions(self, steps: usize) -> usize {
        match self {
            Output::Logits { every: true } => steps,
            _ => 1,
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

//! The fused network as one candle custom op, so `loss.backward()` reaches
//! it: token ids in, logits out, every parameter packed into one vector (a
//! `cat` of the named tensors, whose backward hands each its gradient).
//! Inside, the embedding lookup, every recurrent layer (all directions,
//! all steps), the dropout masks and the dense layer run on plain slices,
//! time-major; the forward keeps what the backward needs. The output is the
//! logits after the last token, or after every token (every-position
//! training: the dense layer then reads every step and the last layer's
//! backward gets an output gradient at every step).
use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp2, Device, Layout, Result, Shape, Storage, Tensor};

use super::matmul::{product, threads_for, Mat, MatMut};
use super::sequence::{self, Dims, Initial, Mode, State};
use super::threads;
use crate::nn::recurrent::{LayerState, RecurrentLayer};
use crate::nn::{Dropout, Network};

/// The layer's parameters in the packed order `sequence` expects.
pub fn pack_parameters(layer: &RecurrentLayer) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(8);
    for w in std::iter::once(&layer.forward).chain(layer.reverse.as_ref()) {
        parts.push(w.weight_ih.flatten_all()?);
        parts.push(w.weight_hh.flatten_all()?);
        parts.push(w.bias_ih.clone());
        parts.push(w.bias_hh.clone());
    }
    Tensor::cat(&parts, 0)
}

/// Every parameter of the network in one vector: embedding, each layer
/// packed as `sequence` expects, dense weight, dense bias.
fn pack_network(net: &Network) -> Result<Tensor> {
    let mut parts = vec![net.embedding.flatten_all()?];
    for layer in &net.layers {
        for w in std::iter::once(&layer.forward).chain(layer.reverse.as_ref()) {
            parts.push(w.weight_ih.flatten_all()?);
            parts.push(w.weight_hh.flatten_all()?);
            parts.push(w.bias_ih.clone());
            parts.push(w.bias_hh.clone());
        }
    }
    parts.push(net.dense_weight.flatten_all()?);
    parts.push(net.dense_bias.clone());
    Tensor::cat(&parts, 0)
}

/// Logits [B, vocab] for `ids` u32 [B, T] through the fused kernels. With
/// `dropout`, the spec's dropout layers are active, with the masks (and
/// the random draws) the composed path would use.
pub fn network_forward(
    net: &Network,
    ids: &Tensor,
    dropout: Option<&mut Dropout>,
) -> Result<Tensor> {
    network_op(net, ids, dropout, false)
}

/// Logits [B, T, vocab] after every token of `ids` u32 [B, T]; for
/// unidirectional networks (a reverse direction would read ahead).
pub fn network_forward_every(
    net: &Network,
    ids: &Tensor,
    dropout: Option<&mut Dropout>,
) -> Result<Tensor> {
    if !net.is_stateful() {
        bail!("fused network: every-position logits need unidirectional layers");
    }
    network_op(net, ids, dropout, true)
}

fn network_op(
    net: &Network,
    ids: &Tensor,
    dropout: Option<&mut Dropout>,
    every: bool,
) -> Result<Tensor> {
    network_op_from(net, ids, dropout, every, None, None)
}

/// Stateful training's forward through the fused kernels (unidirectional
/// networks): logits after every token ([B, T, vocab]) or the last ([B,
/// vocab]), continuing from `init` (one state per layer, [B, H] each;
/// zeros when None), and the states after the last token. The gradient
/// stops at `init` (truncated BPTT).
pub fn network_forward_carried(
    net: &Network,
    ids: &Tensor,
    init: Option<&[LayerState]>,
    dropout: Option<&mut Dropout>,
    every: bool,
) -> Result<(Tensor, Vec<LayerState>)> {
    if !net.is_stateful() {
        bail!("fused network: only unidirectional layers carry state");
    }
    let init = match init {
        None => None,
        Some(states) => Some(
            states
                .iter()
                .map(|st| {
                    let c = st.c.as_ref().map(|c| c.flatten_all()?.to_vec1::<f32>());
                    Ok(Carry {
                        h: st.h.flatten_all()?.to_vec1::<f32>()?,
                        c: c.transpose()?,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        ),
    };
    let finals = std::sync::Arc::new(Mutex::new(Vec::new()));
    let logits = network_op_from(net, ids, dropout, every, init, Some(finals.clone()))?;
    let batch = ids.dim(0)?;
    let finals = std::mem::take(&mut *finals.lock().unwrap_or_else(|e| e.into_inner()));
    let states = finals
        .into_iter()
        .zip(&net.spec.layers)
        .map(|(f, l)| {
            let c =
                f.c.map(|c| Tensor::from_vec(c, (batch, l.units), &Device::Cpu));
            Ok(LayerState {
                h: Tensor::from_vec(f.h, (batch, l.units), &Device::Cpu)?,
                c: c.transpose()?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((logits, states))
}

/// One layer's carried state as plain vectors: h and, for LSTMs, c, [B, H].
#[derive(Clone, Debug, Default)]
struct Carry {
    h: Vec<f32>,
    c: Option<Vec<f32>>,
}

type Finals = std::sync::Arc<Mutex<Vec<Carry>>>;

fn network_op_from(
    net: &Network,
    ids: &Tensor,
    dropout: Option<&mut Dropout>,
    every: bool,
    init: Option<Vec<Carry>>,
    finals: Option<Finals>,
) -> Result<Tensor> {
    let (batch, steps) = ids.dims2()?;
    if steps == 0 {
        bail!("fused network: the sequences are empty");
    }
    let shape = NetShape::new(net, batch, steps, every);
    let masks = Masks::draw(net, &shape, dropout);
    let params = pack_network(net)?;
    ids.to_dtype(candle_core::DType::U32)?
        .contiguous()?
        .apply_op2(
            &params,
            NetworkOp {
                shape,
                masks,
                saved: Mutex::new(None),
                init,
                finals,
            },
        )
}

/// Sizes and parameter offsets of one call.
struct NetShape {
    batch: usize,
    steps: usize,
    /// Logits after every token ([B, T, vocab]), not only the last.
    every: bool,
    vocab: usize,
    embedding_dim: usize,
    layers: Vec<Dims>,
    /// Start of each layer's packed parameters, then of the dense weight,
    /// then of the dense bias, then the total.
    offsets: Vec<usize>,
}

impl NetShape {
    fn new(net: &Network, batch: usize, steps: usize, every: bool) -> Self {
        let spec = &net.spec;
        let mut input = spec.embedding_dim;
        let mut offset = spec.vocab_size * spec.embedding_dim;
        let mut offsets = Vec::new();
        let mut layers = Vec::new();
        for l in &spec.layers {
            let d = Dims {
                cell: l.cell,
                steps,
                batch,
                input,
                units: l.units,
                dirs: l.directions(),
            };
            offsets.push(offset);
            offset += d.param_len();
            input = d.width();
            layers.push(d);
        }
        offsets.push(offset);
        offset += spec.vocab_size * input;
        offsets.push(offset);
        offsets.push(offset + spec.vocab_size);
        Self {
            batch,
            steps,
            every,
            vocab: spec.vocab_size,
            embedding_dim: spec.embedding_dim,
            layers,
            offsets,
        }
    }

    fn width(&self) -> usize {
        self.layers.last().map_or(self.embedding_dim, Dims::width)
    }

    /// Rows of the dense layer's input: B, or T*B (time-major) with every.
    fn dense_rows(&self) -> usize {
        if self.every {
            self.steps * self.batch
        } else {
            self.batch
        }
    }

    fn layer_params<'a>(&self, params: &'a [f32], i: usize) -> &'a [f32] {
        &params[self.offsets[i]..self.offsets[i + 1]]
    }

    fn dense_weight<'a>(&self, params: &'a [f32]) -> &'a [f32] {
        let n = self.layers.len();
        &params[self.offsets[n]..self.offsets[n + 1]]
    }

    fn dense_bias<'a>(&self, params: &'a [f32]) -> &'a [f32] {
        let n = self.layers.len();
        &params[self.offsets[n + 1]..self.offsets[n + 2]]
    }

    fn param_len(&self) -> usize {
        *self.offsets.last().expect("offsets end with the total")
    }
}

/// Dropout masks of one training step, laid out like the tensors they
/// scale (time-major inside the network, [B, W] after the last layer
/// unless every step goes on to the dense layer).
struct Masks {
    embedding: Option<Vec<f32>>,
    layers: Vec<Option<Vec<f32>>>,
}

impl Masks {
    fn draw(net: &Network, shape: &NetShape, dropout: Option<&mut Dropout>) -> Self {
        let Some(d) = dropout else {
            return Self {
                embedding: None,
                layers: vec![None; shape.layers.len()],
            };
        };
        let (b, t) = (shape.batch, shape.steps);
        let embedding = d.time_major_mask(b, t, shape.embedding_dim, net.spec.embedding_dropout);
        let last = shape.layers.len() - 1;
        let layers = net
            .spec
            .layers
            .iter()
            .zip(&shape.layers)
            .enumerate()
            .map(|(i, (l, dims))| {
                if i < last || shape.every {
                    d.time_major_mask(b, t, dims.width(), l.dropout)
                } else {
                    d.batch_mask(b * dims.width(), l.dropout)
                }
            })
            .collect();
        Self { embedding, layers }
    }
}

fn scale(x: &mut [f32], mask: Option<&Vec<f32>>) {
    if let Some(m) = mask {
        x.iter_mut().zip(m).for_each(|(v, m)| *v *= m);
    }
}

/// What the forward keeps for the backward.
struct Saved {
    ids: Vec<u32>,
    /// Each layer's input, time-major [T, B, I]; None where it is the
    /// previous layer's hidden states as they are (no dropout between).
    inputs: Vec<Option<Vec<f32>>>,
    states: Vec<State>,
    /// The dense layer's input, dropout applied: [B, W] (final states) or,
    /// with every, [T, B, W] (every state).
    last: Vec<f32>,
}

struct NetworkOp {
    shape: NetShape,
    masks: Masks,
    saved: Mutex<Option<Saved>>,
    /// The state each layer starts from (zeros when None).
    init: Option<Vec<Carry>>,
    /// Where the forward leaves each layer's state after the last token.
    finals: Option<Finals>,
}

/// Buffers of finished backward passes, for the next forwards: saves
/// allocating (and the kernel zeroing fresh pages for) every step's
/// activations. Only small states are kept (at most 8 of up to 8 MB, so
/// an idle process holds at most 64 MB here); large models are dominated
/// by arithmetic anyway.
static SPARE: Mutex<Vec<State>> = Mutex::new(Vec::new());
const SPARE_STATES: usize = 8;
const SPARE_FLOATS: usize = 1 << 21;

fn spare_state() -> State {
    SPARE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop()
        .unwrap_or_default()
}

fn recycle(state: State) {
    if state.capacity() <= SPARE_FLOATS {
        let mut spare = SPARE.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < SPARE_STATES {
            spare.push(state);
        }
    }
}

/// `[outer, inner, row]` -> `[inner, outer, row]` (batch-major <->
/// time-major).
fn swap_major(src: &[f32], outer: usize, inner: usize, row: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; src.len()];
    for (o, block) in src.chunks_exact(inner * row).enumerate() {
        for (i, r) in block.chunks_exact(row).enumerate() {
            out[(i * outer + o) * row..][..row].copy_from_slice(r);
        }
    }
    out
}

/// The f32 elements of a contiguous CPU storage.
pub fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("fused kernels take f32 tensors");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("fused kernels take contiguous tensors"),
    }
}

/// Runs `f` on a CPU tensor's f32 elements (made contiguous first).
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(f32_slice(cpu, layout)?),
        _ => bail!("fused kernels run on the CPU"),
    }
}

/// A unidirectional layer's state after its last step: h, and c (the
/// first H floats of each row's extra block) for an LSTM.
fn final_state(d: &Dims, state: &State) -> Carry {
    let (b, h) = (d.batch, d.units);
    let last = d.steps - 1;
    let c = (d.cell == crate::nn::Cell::Lstm).then(|| {
        let eh = d.extra_width();
        let rows = &state.extra[0][last * b * eh..];
        rows.chunks_exact(eh)
            .flat_map(|r| &r[..h])
            .copied()
            .collect()
    });
    Carry {
        h: state.h[last * b * h..].to_vec(),
        c,
    }
}

impl NetworkOp {
    /// Layer `i`'s initial state, if it does not start from zeros.
    fn initial(&self, i: usize) -> Option<Initial<'_>> {
        self.init.as_ref().map(|v| Initial {
            h: &v[i].h,
            c: v[i].c.as_deref(),
        })
    }

    fn forward(&self, ids: &[u32], params: &[f32]) -> Result<(Vec<f32>, Saved)> {
        let s = &self.shape;
        let mut x0 = embed(s, ids, params)?;
        scale(&mut x0, self.masks.embedding.as_ref());
        let (inputs, states) = self.layers_forward(params, x0);
        let last_h = &states[s.layers.len() - 1].h;
        let mut last = Vec::new();
        if s.every {
            last.extend_from_slice(last_h);
        } else {
            let last_dims = s.layers.last().expect("a network has layers");
            sequence::last_states(last_dims, last_h, &mut last);
        }
        scale(&mut last, self.masks.layers.last().and_then(Option::as_ref));
        let mut logits = dense_forward(s, params, &last);
        if s.every {
            logits = swap_major(&logits, s.steps, s.batch, s.vocab);
        }
        let saved = Saved {
            ids: ids.to_vec(),
            inputs,
            states,
            last,
        };
        Ok((logits, saved))
    }

    /// Every layer forward from the embedded input `x0`: each layer's
    /// input (None where it is the layer below's output, unmasked) and
    /// state.
    fn layers_forward(&self, params: &[f32], x0: Vec<f32>) -> (Vec<Option<Vec<f32>>>, Vec<State>) {
        let s = &self.shape;
        let mut inputs = vec![Some(x0)];
        let mut states: Vec<State> = Vec::with_capacity(s.layers.len());
        for (i, d) in s.layers.iter().enumerate() {
            let weights = sequence::prepare(d, s.layer_params(params, i));
            let mut state = spare_state();
            {
                let x: &[f32] = match &inputs[i] {
                    Some(x) => x,
                    None => &states[i - 1].h,
                };
                let init = self.initial(i);
                sequence::forward_from(d, x, &weights, &mut state, Mode::Train, init);
            }
            if let Some(finals) = &self.finals {
                let carry = final_state(d, &state);
                finals.lock().unwrap_or_else(|e| e.into_inner()).push(carry);
            }
            states.push(state);
            if i + 1 < s.layers.len() {
                inputs.push(
                    self.masks.layers[i]
                        .as_ref()
                        .map(|m| states[i].h.iter().zip(m).map(|(h, m)| h * m).collect()),
                );
            }
        }
        (inputs, states)
    }

    fn backward(&self, params: &[f32], saved: &mut Saved, dlogits: &[f32]) -> Result<Vec<f32>> {
        let s = &self.shape;
        // Every-position gradients come batch-major; the dense input is
        // time-major.
        let time_major;
        let dlogits = if s.every {
            time_major = swap_major(dlogits, s.batch, s.steps, s.vocab);
            &time_major[..]
        } else {
            dlogits
        };
        let mut grads = vec![0.0f32; s.param_len()];
        let (head, dense) = grads.split_at_mut(s.offsets[s.layers.len()]);
        let mut dy = dense_backward(s, params, &saved.last, dlogits, dense);
        scale(&mut dy, self.masks.layers.last().and_then(Option::as_ref));
        let dx0 = self.layers_backward(params, saved, dy, head);
        embedding_backward(s, &saved.ids, &dx0, &mut grads[..s.vocab * s.embedding_dim]);
        Ok(grads)
    }

    /// The layers backward, last to first, from the gradient `dy` of the
    /// last one's output; writes their parameter gradients into `head`
    /// (every layer's, packed) and returns the embedded input's gradient.
    fn layers_backward(
        &self,
        params: &[f32],
        saved: &mut Saved,
        mut dy: Vec<f32>,
        head: &mut [f32],
    ) -> Vec<f32> {
        let s = &self.shape;
        let mut dy_seq = s.every;
        for i in (0..s.layers.len()).rev() {
            let d = &s.layers[i];
            let dparams = &mut head[s.offsets[i]..][..d.param_len()];
            let mut dx = vec![0.0f32; s.steps * s.batch * d.input];
            {
                let (prev_states, this) = saved.states.split_at_mut(i);
                let state = &mut this[0];
                let hs = std::mem::take(&mut state.h);
                let x: &[f32] = match &saved.inputs[i] {
                    Some(x) => x,
                    None => &prev_states[i - 1].h,
                };
                sequence::backward(
                    d,
                    x,
                    s.layer_params(params, i),
                    state,
                    &hs,
                    &dy,
                    dy_seq,
                    &mut dx,
                    dparams,
                    self.initial(i),
                );
                state.h = hs;
            }
            if i > 0 {
                scale(&mut dx, self.masks.layers[i - 1].as_ref());
            } else {
                scale(&mut dx, self.masks.embedding.as_ref());
            }
            dy = dx;
            dy_seq = true;
        }
        dy
    }
}

/// Time-major embedding lookup: [T, B, E] from the batch-major ids.
fn embed(s: &NetShape, ids: &[u32], params: &[f32]) -> Result<Vec<f32>> {
    let (b, t, e, v) = (s.batch, s.steps, s.embedding_dim, s.vocab);
    let table = &params[..v * e];
    let mut x0 = vec![0.0f32; t * b * e];
    for (r, row_ids) in ids.chunks_exact(t).enumerate() {
        for (ti, &id) in row_ids.iter().enumerate() {
            let id = id as usize;
            if id >= v {
                bail!("fused network: token id {id} is not below the vocabulary size {v}");
            }
            x0[(ti * b + r) * e..][..e].copy_from_slice(&table[id * e..][..e]);
        }
    }
    Ok(x0)
}

/// Embedding backward: each table row gathers the gradients of its tokens.
fn embedding_backward(s: &NetShape, ids: &[u32], dx0: &[f32], d_table: &mut [f32]) {
    let (b, t, e) = (s.batch, s.steps, s.embedding_dim);
    for (r, row_ids) in ids.chunks_exact(t).enumerate() {
        for (ti, &id) in row_ids.iter().enumerate() {
            let src = &dx0[(ti * b + r) * e..][..e];
            d_table[id as usize * e..][..e]
                .iter_mut()
                .zip(src)
                .for_each(|(g, d)| *g += d);
        }
    }
}

/// The dense layer: logits = last W^T + bias, [rows, V].
fn dense_forward(s: &NetShape, params: &[f32], last: &[f32]) -> Vec<f32> {
    let (v, w, rows) = (s.vocab, s.width(), s.dense_rows());
    let dense_t = sequence::transpose(s.dense_weight(params), v, w);
    let mut logits = Vec::with_capacity(rows * v);
    for _ in 0..rows {
        logits.extend_from_slice(s.dense_bias(params));
    }
    // SAFETY: shapes as named; the buffers are distinct.
    unsafe {
        product(
            rows,
            v,
            w,
            MatMut::rows(&mut logits, v),
            true,
            Mat::rows(last, w),
            Mat::rows(&dense_t, v),
            threads_for(rows, v, w, threads::threads()),
        );
    }
    logits
}

/// The dense layer backward: its weight and bias gradients into `dense`
/// ([V, W] then [V]); returns the gradient of its input `last`.
fn dense_backward(
    s: &NetShape,
    params: &[f32],
    last: &[f32],
    dlogits: &[f32],
    dense: &mut [f32],
) -> Vec<f32> {
    let (v, w, rows) = (s.vocab, s.width(), s.dense_rows());
    let all = threads::threads();
    let (d_dense_w, d_dense_b) = dense.split_at_mut(v * w);
    let mut dy = vec![0.0f32; rows * w];
    // SAFETY: shapes as named; the buffers are distinct.
    unsafe {
        product(
            v,
            w,
            rows,
            MatMut::rows(d_dense_w, w),
            false,
            Mat::rows(dlogits, v).t(),
            Mat::rows(last, w),
            threads_for(v, w, rows, all),
        );
        product(
            rows,
            w,
            v,
            MatMut::rows(&mut dy, w),
            false,
            Mat::rows(dlogits, v),
            Mat::rows(s.dense_weight(params), w),
            threads_for(rows, w, v, all),
        );
    }
    for row in dlogits.chunks_exact(v) {
        d_dense_b.iter_mut().zip(row).for_each(|(g, d)| *g += d);
    }
    dy
}

impl CustomOp2 for NetworkOp {
    fn name(&self) -> &'static str {
        "fused-recurrent-network"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::U32(ids) = s1 else {
            bail!("fused network: token ids must be u32");
        };
        let Some((a, z)) = l1.contiguous_offsets() else {
            bail!("fused network: token ids must be contiguous");
        };
        let ids = &ids[a..z];
        let params = f32_slice(s2, l2)?;
        let s = &self.shape;
        if ids.len() != s.batch * s.steps || params.len() != s.param_len() {
            bail!("fused network: inputs do not match the network");
        }
        let (logits, saved) = self.forward(ids, params)?;
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        let shape = if s.every {
            Shape::from((s.batch, s.steps, s.vocab))
        } else {
            Shape::from((s.batch, s.vocab))
        };
        Ok((CpuStorage::F32(logits), shape))
    }

    fn bwd(
        &self,
        _ids: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Some(mut saved) = self.saved.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            bail!("fused network: backward ran twice over one forward");
        };
        let grads = with_f32(params, |p| {
            with_f32(grad, |dl| self.backward(p, &mut saved, dl))
        })?;
        for state in saved.states {
            recycle(state);
        }
        Ok((
            None,
            Some(Tensor::from_vec(grads, params.shape(), &Device::Cpu)?),
        ))
    }
}

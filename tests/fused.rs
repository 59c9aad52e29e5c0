//! The fused kernels against the composed candle path (their oracle):
//! logits and the gradient of every parameter agree to 1e-5, for every
//! cell, uni- and bidirectional, 1 and 3 layers, odd sizes, with and
//! without dropout, scoring the last or every position; the fused loss
//! against candle-nn's; the inference engine against the forward pass.
use candle_core::{DType, Device, Tensor, Var};
use lstmd::nn::fused::{self, Engine};
use lstmd::nn::{initial_parameters, Cell, Dropout, LayerSpec, ModelSpec, Network};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Serialises the tests that choose which kernel runs the products (a
/// process-wide setting).
static PRODUCTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f` with products from `gemm_from` multiply-adds on sent to gemm
/// (usize::MAX: all through the register-blocked kernel, which debug
/// builds otherwise skip).
fn with_products(gemm_from: usize, f: impl FnOnce()) {
    let _guard = PRODUCTS.lock().unwrap_or_else(|e| e.into_inner());
    fused::matmul::set_gemm_min_macs(gemm_from);
    f();
    fused::matmul::set_gemm_min_macs(fused::matmul::DEFAULT_GEMM_MIN_MACS);
}

fn spec(cell: Cell, bidirectional: bool, units: &[usize], dropout: f32) -> ModelSpec {
    ModelSpec {
        vocab_size: 13,
        embedding_dim: 5,
        window: 7,
        embedding_dropout: dropout,
        layers: units
            .iter()
            .map(|&units| LayerSpec {
                cell,
                units,
                bidirectional,
                dropout,
            })
            .collect(),
    }
}

fn build(spec: &ModelSpec, seed: u64) -> (Network, Vec<(String, Var)>) {
    let vars: Vec<(String, Var)> = initial_parameters(spec, seed, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, Var::from_tensor(&t).unwrap()))
        .collect();
    let map = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    (Network::from_tensors(spec, &map).unwrap(), vars)
}

fn batch(spec: &ModelSpec, rows: usize, steps: usize, seed: u64) -> (Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v = spec.vocab_size as u32;
    let ids: Vec<u32> = (0..rows * steps).map(|_| rng.random_range(0..v)).collect();
    let targets: Vec<u32> = (0..rows).map(|_| rng.random_range(0..v)).collect();
    (
        Tensor::from_vec(ids, (rows, steps), &Device::Cpu).unwrap(),
        Tensor::from_vec(targets, rows, &Device::Cpu).unwrap(),
    )
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Largest |a - b| relative to the largest |b| in the tensor: f32 sums of
/// hundreds of terms in another order differ by about 1e-7 of the scale;
/// a wrong formula by O(1).
fn worst_relative(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (values(a), values(b));
    let floor = b.iter().fold(0f64, |m, v| m.max(v.abs())) + 1e-12;
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(floor))
        .fold(0.0, f64::max)
}

/// Runs both paths on the same parameters and batch; asserts logits, loss
/// and every gradient agree to 1e-5. Prints how far each f32 path is from
/// the composed path in f64, for scale.
fn check_agreement(spec: &ModelSpec, rows: usize, steps: usize, with_dropout: bool, label: &str) {
    check_scoring(spec, rows, steps, with_dropout, false, label)
}

/// [`check_agreement`] with the loss at every position when `every`.
fn check_scoring(
    spec: &ModelSpec,
    rows: usize,
    steps: usize,
    with_dropout: bool,
    every: bool,
    label: &str,
) {
    let (net, vars) = build(spec, 11);
    let (ids, targets) = batch(spec, rows, steps, 12);
    let targets = if every {
        batch(spec, rows * steps, 1, 13).0.flatten_all().unwrap()
    } else {
        targets
    };
    let run = |net: &Network, vars: &[(String, Var)], fused_path: bool| {
        let mut dropout = Dropout::new(5);
        let d = with_dropout.then_some(&mut dropout);
        let logits = match (every, fused_path) {
            (true, f) => net.forward_every_on(&ids, d, f).unwrap(),
            (false, true) => net.forward_fused(&ids, d).unwrap(),
            (false, false) => net.forward_composed(&ids, d).unwrap(),
        };
        let flat = logits.reshape(((), spec.vocab_size)).unwrap();
        let loss = candle_nn::loss::cross_entropy(&flat, &targets).unwrap();
        let grads = loss.backward().unwrap();
        // With one step the composed path never multiplies by weight_hh,
        // so it has no gradient there: zero, as the fused path says.
        let grads: Vec<Tensor> = vars
            .iter()
            .map(|(_, v)| match grads.get(v.as_tensor()) {
                Some(g) => g.clone(),
                None => v.as_tensor().zeros_like().unwrap(),
            })
            .collect();
        (logits, loss, grads)
    };
    let (lf, lossf, gf) = run(&net, &vars, true);
    let (lc, lossc, gc) = run(&net, &vars, false);
    let vars64: Vec<(String, Var)> = vars
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                Var::from_tensor(&v.to_dtype(DType::F64).unwrap()).unwrap(),
            )
        })
        .collect();
    let net64 = Network::from_tensors(
        spec,
        &vars64
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect(),
    )
    .unwrap();
    let (l64, _, g64) = run(&net64, &vars64, false);
    let tol = 1e-5;
    let e = worst_relative(&lf, &lc);
    assert!(e <= tol, "{label}: logits differ by {e:e}");
    let e = worst_relative(&lossf, &lossc);
    assert!(e <= tol, "{label}: loss differs by {e:e}");
    let (mut worst, mut worst_f64, mut worst_c64) = (0f64, 0f64, worst_relative(&lc, &l64));
    worst_f64 = worst_f64.max(worst_relative(&lf, &l64));
    for (i, (name, _)) in vars.iter().enumerate() {
        let e = worst_relative(&gf[i], &gc[i]);
        worst_f64 = worst_f64.max(worst_relative(&gf[i], &g64[i]));
        worst_c64 = worst_c64.max(worst_relative(&gc[i], &g64[i]));
        assert!(e <= tol, "{label}: gradient of {name} differs by {e:e}");
        worst = worst.max(e);
    }
    eprintln!(
        "{label}: fused vs composed {worst:.1e}; vs f64: fused {worst_f64:.1e}, composed {worst_c64:.1e}"
    );
}

#[test]
fn fused_layers_match_composed_values_and_gradients() {
    with_products(usize::MAX, || {
        // Small blocks, so the batch-parallel split runs where there are
        // cores.
        fused::threads::set_min_rows_per_worker(4);
        for cell in [Cell::Lstm, Cell::Gru, Cell::Rnn] {
            for bidirectional in [false, true] {
                for units in [&[9][..], &[9, 6, 11][..]] {
                    let s = spec(cell, bidirectional, units, 0.0);
                    let label = format!("{cell:?} bi={bidirectional} units={units:?}");
                    check_agreement(&s, 37, 7, false, &label);
                }
            }
        }
    });
}

#[test]
fn every_position_fused_matches_composed() {
    with_products(usize::MAX, || {
        fused::threads::set_min_rows_per_worker(4);
        for cell in [Cell::Lstm, Cell::Gru, Cell::Rnn] {
            for bidirectional in [false, true] {
                for dropout in [0.0, 0.3] {
                    let s = spec(cell, bidirectional, &[9, 6], dropout);
                    let label = format!("{cell:?} bi={bidirectional} every, dropout {dropout}");
                    check_scoring(&s, 13, 5, dropout > 0.0, true, &label);
                }
            }
            let s = spec(cell, false, &[4], 0.0);
            check_scoring(&s, 1, 1, false, true, &format!("{cell:?} every T=1 B=1"));
        }
    });
}

#[test]
fn agreement_holds_with_step_products_split() {
    with_products(usize::MAX, || {
        // No batch split: each step's products are split over the workers.
        fused::threads::set_min_rows_per_worker(0);
        for cell in [Cell::Lstm, Cell::Gru, Cell::Rnn] {
            let s = spec(cell, false, &[9, 13], 0.0);
            check_agreement(&s, 23, 4, false, &format!("{cell:?} step-split"));
        }
        fused::threads::set_min_rows_per_worker(4);
    });
}

#[test]
fn agreement_holds_with_gemm_for_every_product() {
    with_products(0, || {
        for cell in [Cell::Lstm, Cell::Gru, Cell::Rnn] {
            let s = spec(cell, true, &[9, 6], 0.0);
            check_agreement(&s, 21, 5, false, &format!("{cell:?} through gemm"));
        }
    });
}

#[test]
fn dropout_masks_and_gradients_agree() {
    with_products(usize::MAX, || {
        for cell in [Cell::Lstm, Cell::Gru, Cell::Rnn] {
            let s = spec(cell, true, &[8, 7], 0.3);
            check_agreement(&s, 19, 6, true, &format!("{cell:?} with dropout"));
        }
    });
}

#[test]
fn single_step_and_single_row_agree() {
    with_products(usize::MAX, || {
        for cell in [Cell::Lstm, Cell::Gru, Cell::Rnn] {
            let s = spec(cell, true, &[3, 4], 0.0);
            check_agreement(&s, 1, 1, false, &format!("{cell:?} T=1 B=1"));
            check_agreement(&s, 2, 3, false, &format!("{cell:?} T=3 B=2"));
        }
    });
}

#[test]
fn fused_cross_entropy_matches_candle_nn() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (b, v) = (23, 31);
    let logits: Vec<f32> = (0..b * v).map(|_| rng.random_range(-4.0..4.0)).collect();
    let targets: Vec<u32> = (0..b).map(|_| rng.random_range(0..v as u32)).collect();
    let logits =
        Var::from_tensor(&Tensor::from_vec(logits, (b, v), &Device::Cpu).unwrap()).unwrap();
    let targets = Tensor::from_vec(targets, b, &Device::Cpu).unwrap();
    let ours = fused::cross_entropy(logits.as_tensor(), &targets).unwrap();
    let theirs = candle_nn::loss::cross_entropy(logits.as_tensor(), &targets).unwrap();
    assert!(worst_relative(&ours, &theirs) <= 1e-6);
    // Scale the loss so the incoming gradient is not 1.
    let g1 = (&ours * 3.0).unwrap().backward().unwrap();
    let g2 = (&theirs * 3.0).unwrap().backward().unwrap();
    let e = worst_relative(g1.get(&logits).unwrap(), g2.get(&logits).unwrap());
    assert!(e <= 1e-5, "gradient differs by {e:e}");
}

#[test]
fn inference_engine_matches_forward() {
    for cell in [Cell::Lstm, Cell::Gru, Cell::Rnn] {
        for bidirectional in [false, true] {
            let s = spec(cell, bidirectional, &[10, 7], 0.0);
            let (net, _) = build(&s, 21);
            let engine = Engine::new(&net).unwrap().expect("CPU f32 network");
            for rows in [1, 70, 130] {
                let (ids, _) = batch(&s, rows, 5, rows as u64);
                let want =
                    candle_nn::ops::softmax_last_dim(&net.forward_composed(&ids, None).unwrap())
                        .unwrap();
                let flat: Vec<u32> = ids.flatten_all().unwrap().to_vec1().unwrap();
                let got = engine.probabilities(&flat, rows, 5);
                let got = Tensor::from_vec(got, (rows, s.vocab_size), &Device::Cpu).unwrap();
                let e = worst_relative(&got, &want);
                assert!(e <= 1e-5, "{cell:?} bi={bidirectional} rows={rows}: {e:e}");
            }
        }
    }
}

/// The engine's logits, after the last token and after each, are the
/// training network's (validation runs on the engine).
#[test]
fn inference_engine_logits_match_forward_last_and_every() {
    for cell in [Cell::Lstm, Cell::Gru, Cell::Rnn] {
        for bidirectional in [false, true] {
            let s = spec(cell, bidirectional, &[10, 7], 0.0);
            let (net, _) = build(&s, 22);
            let engine = Engine::new(&net).unwrap().expect("CPU f32 network");
            for rows in [1, 70, 130] {
                let (ids, _) = batch(&s, rows, 5, rows as u64);
                let flat: Vec<u32> = ids.flatten_all().unwrap().to_vec1().unwrap();
                let label = format!("{cell:?} bi={bidirectional} rows={rows}");
                let want = net.forward_composed(&ids, None).unwrap();
                let got = engine.logits(&flat, rows, 5, false);
                let got = Tensor::from_vec(got, (rows, s.vocab_size), &Device::Cpu).unwrap();
                let e = worst_relative(&got, &want);
                assert!(e <= 1e-5, "{label} last: {e:e}");
                let want = net.forward_every_on(&ids, None, false).unwrap();
                let want = want.reshape((rows * 5, s.vocab_size)).unwrap();
                let got = engine.logits(&flat, rows, 5, true);
                let got = Tensor::from_vec(got, (rows * 5, s.vocab_size), &Device::Cpu).unwrap();
                let e = worst_relative(&got, &want);
                assert!(e <= 1e-5, "{label} every: {e:e}");
            }
        }
    }
}

#[test]
fn inference_is_batch_invariant() {
    for cell in [Cell::Lstm, Cell::Gru, Cell::Rnn] {
        let s = spec(cell, true, &[20, 18], 0.0);
        let (net, _) = build(&s, 31);
        let engine = Engine::new(&net).unwrap().expect("CPU f32 network");
        let rows = 70;
        let (ids, _) = batch(&s, rows, 6, 4);
        let flat: Vec<u32> = ids.flatten_all().unwrap().to_vec1().unwrap();
        let all = engine.probabilities(&flat, rows, 6);
        let v = s.vocab_size;
        for r in [0, 1, 6, 63, 64, 69] {
            let alone = engine.probabilities(&flat[r * 6..(r + 1) * 6], 1, 6);
            assert_eq!(alone[..], all[r * v..(r + 1) * v], "{cell:?} row {r}");
        }
    }
}

#[test]
fn carried_state_matches_composed_and_whole_sequences() {
    use lstmd::nn::fused::StepState;
    for cell in [Cell::Lstm, Cell::Gru, Cell::Rnn] {
        let s = spec(cell, false, &[12, 9], 0.0);
        let (net, _) = build(&s, 41);
        let engine = Engine::new(&net).unwrap().expect("CPU f32 network");
        let (ids, _) = batch(&s, 1, 9, 5);
        let flat: Vec<u32> = ids.flatten_all().unwrap().to_vec1().unwrap();
        let whole = engine.probabilities(&flat, 1, 9);
        // Fed in three pieces, carrying the state: the same bits as whole.
        let mut states: Option<Vec<StepState>> = None;
        let mut composed = None;
        let mut got = Vec::new();
        for piece in [&flat[..4], &flat[4..5], &flat[5..]] {
            let (p, next) = engine.step(piece, states.as_deref());
            states = Some(next);
            got = p;
            let x = Tensor::from_slice(piece, (1, piece.len()), &Device::Cpu).unwrap();
            let (logits, next) = net.forward_from(&x, composed.as_deref()).unwrap();
            composed = Some(next);
            // Every piece agrees with the composed path carrying its state.
            let want = candle_nn::ops::softmax_last_dim(&logits).unwrap();
            let p = Tensor::from_vec(got.clone(), (1, s.vocab_size), &Device::Cpu).unwrap();
            let e = worst_relative(&p, &want);
            assert!(e <= 1e-5, "{cell:?} piece of {}: {e:e}", piece.len());
        }
        assert_eq!(got, whole, "{cell:?}: pieces and whole differ");
        // The carried states are the composed path's, layer by layer.
        for (fused, composed) in states.unwrap().iter().zip(composed.unwrap()) {
            let h = composed.h.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let worst = fused
                .h
                .iter()
                .zip(&h)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst <= 1e-5, "{cell:?} h: {worst:e}");
            assert_eq!(fused.c.is_some(), composed.c.is_some(), "{cell:?} c");
            if let (Some(fc), Some(cc)) = (&fused.c, &composed.c) {
                let c = cc.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let worst = fc
                    .iter()
                    .zip(&c)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(worst <= 1e-5, "{cell:?} c: {worst:e}");
            }
        }
    }
}

/// Stateful training's step from a carried (non-zero) state: logits, every
/// gradient and the final states agree between the fused kernels and the
/// composed path, scoring the last or every position, with dropout.
#[test]
fn carried_training_step_fused_matches_composed() {
    use lstmd::nn::LayerState;
    with_products(usize::MAX, || {
        for cell in [Cell::Lstm, Cell::Gru, Cell::Rnn] {
            for every in [false, true] {
                let s = spec(cell, false, &[9, 6], 0.2);
                let (net, vars) = build(&s, 21);
                let (rows, steps) = (11, 5);
                let (ids, last_targets) = batch(&s, rows, steps, 22);
                let targets = if every {
                    batch(&s, rows * steps, 1, 23).0.flatten_all().unwrap()
                } else {
                    last_targets
                };
                let mut rng = ChaCha8Rng::seed_from_u64(24);
                let mut random = |units: usize| {
                    let v: Vec<f32> = (0..rows * units)
                        .map(|_| rng.random_range(-0.8..0.8))
                        .collect();
                    Tensor::from_vec(v, (rows, units), &Device::Cpu).unwrap()
                };
                let init: Vec<LayerState> = s
                    .layers
                    .iter()
                    .map(|l| LayerState {
                        h: random(l.units),
                        c: (cell == Cell::Lstm).then(|| random(l.units)),
                    })
                    .collect();
                let run = |fused_path: bool| {
                    let mut dropout = Dropout::new(25);
                    let (logits, states) = net
                        .forward_carried_on(
                            &ids,
                            Some(&init),
                            Some(&mut dropout),
                            every,
                            fused_path,
                        )
                        .unwrap();
                    let flat = logits.reshape(((), s.vocab_size)).unwrap();
                    let loss = candle_nn::loss::cross_entropy(&flat, &targets).unwrap();
                    let grads = loss.backward().unwrap();
                    let grads: Vec<Tensor> = vars
                        .iter()
                        .map(|(_, v)| grads.get(v.as_tensor()).unwrap().clone())
                        .collect();
                    (logits, states, grads)
                };
                let (lf, sf, gf) = run(true);
                let (lc, sc, gc) = run(false);
                let label = format!("{cell:?} every={every}");
                let e = worst_relative(&lf, &lc);
                assert!(e <= 1e-5, "{label}: logits differ by {e:e}");
                for (a, b) in sf.iter().zip(&sc) {
                    let e = worst_relative(&a.h, &b.h);
                    assert!(e <= 1e-5, "{label}: final h differs by {e:e}");
                    if let (Some(x), Some(y)) = (&a.c, &b.c) {
                        let e = worst_relative(x, y);
                        assert!(e <= 1e-5, "{label}: final c differs by {e:e}");
                    }
                    assert_eq!(a.c.is_some(), b.c.is_some());
                }
                for (i, (name, _)) in vars.iter().enumerate() {
                    let e = worst_relative(&gf[i], &gc[i]);
                    assert!(e <= 1e-5, "{label}: gradient of {name} differs by {e:e}");
                }
            }
        }
    });
}

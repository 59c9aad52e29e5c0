//! `cargo bench --bench train`: training samples/s (fused kernels vs the
//! stock composed candle path) and inference speed, for the four presets
//! and a `large` config, at batch 64 and 256; and the per-token cost of a
//! step from a carried state (Generate, sessions). `benches/pytorch_baseline.py`
//! prints the same table for PyTorch.
//!
//! Optional argument: a substring; only configs whose name holds it run.
//! Environment: `BENCH_SECONDS` (timed loop length, default 1.0),
//! `LSTMD_KERNEL_THREADS` (fused kernels' workers, default all cores),
//! `RAYON_NUM_THREADS` (candle's matmul threads; default 1, the server's);
//! `BENCH_GEMM_MIN_MACS` (products from this size go to gemm);
//! `BENCH_PROFILE=train|composed|infer1|infer1024` runs only that loop,
//! for about `BENCH_SECONDS`, on the selected configs at batch
//! `BENCH_ROWS` (default 64; training), to run under a profiler; it also
//! prints the rate per CPU-second.
//! `BENCH_DEVICES=cpu,cuda` instead compares devices side by side: the
//! service's own paths (fused kernels on the CPU, candle ops on CUDA),
//! training at batch 64, 256 and 1024 and inference at batch 1 and 1024.
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor, Var};
use candle_nn::Optimizer;
use lstmd::backend::backend_for;
use lstmd::nn::fused::{self, Engine};
use lstmd::nn::spec::preset;
use lstmd::nn::{initial_parameters, Cell, Dropout, LayerSpec, ModelSpec, Network};
use lstmd::train::adam::Adam;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn large() -> ModelSpec {
    let lstm = |units| LayerSpec {
        cell: Cell::Lstm,
        units,
        bidirectional: false,
        dropout: 0.0,
    };
    ModelSpec {
        vocab_size: 100,
        embedding_dim: 64,
        window: 64,
        embedding_dropout: 0.0,
        layers: vec![lstm(512), lstm(512)],
    }
}

fn configs() -> Vec<(&'static str, ModelSpec)> {
    let mut out: Vec<(&'static str, ModelSpec)> = lstmd::nn::spec::PRESETS
        .iter()
        .map(|&n| (n, preset(n).expect("preset exists")))
        .collect();
    out.push(("large", large()));
    out
}

fn seconds() -> f64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0)
}

fn random_batch(spec: &ModelSpec, rows: usize, rng: &mut ChaCha8Rng) -> (Vec<u32>, Vec<u32>) {
    let v = spec.vocab_size as u32;
    let ids = (0..rows * spec.window)
        .map(|_| rng.random_range(0..v))
        .collect();
    let targets = (0..rows).map(|_| rng.random_range(0..v)).collect();
    (ids, targets)
}

fn network(spec: &ModelSpec) -> (Network, Vec<Var>) {
    let named = initial_parameters(spec, 7, &Device::Cpu).unwrap();
    let vars: Vec<(String, Var)> = named
        .into_iter()
        .map(|(n, t)| (n, Var::from_tensor(&t).unwrap()))
        .collect();
    let map = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let net = Network::from_tensors(spec, &map).unwrap();
    (net, vars.into_iter().map(|(_, v)| v).collect())
}

/// Runs `step` once to warm up, then at least twice and for about the
/// configured time; returns steps per second.
fn rate(mut step: impl FnMut()) -> f64 {
    step();
    let budget = Duration::from_secs_f64(seconds());
    let start = Instant::now();
    let mut n = 0u32;
    while n < 2 || start.elapsed() < budget {
        step();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn train_rate(spec: &ModelSpec, rows: usize, use_fused: bool) -> f64 {
    let (net, vars) = network(spec);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let batches: Vec<(Tensor, Tensor)> = (0..8)
        .map(|_| {
            let (ids, targets) = random_batch(spec, rows, &mut rng);
            (
                Tensor::from_vec(ids, (rows, spec.window), &Device::Cpu).unwrap(),
                Tensor::from_vec(targets, rows, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    let mut dropout = Dropout::new(3);
    let mut i = 0;
    let steps_per_s = if use_fused {
        let mut adam = Adam::new(
            vars,
            lstmd::train::adam::AdamSettings {
                optimizer: lstmd::train::config::Optimizer::Adam,
                learning_rate: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-7,
                weight_decay: 0.0,
            },
        )
        .unwrap();
        rate(|| {
            let (x, y) = &batches[i % batches.len()];
            i += 1;
            let logits = net.forward_fused(x, Some(&mut dropout)).unwrap();
            let loss = fused::cross_entropy(&logits, y).unwrap();
            let grads = loss.backward().unwrap();
            adam.step(&grads, 1.0).unwrap();
        })
    } else {
        let params = candle_nn::ParamsAdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-7,
            weight_decay: 0.0,
        };
        let mut adam = candle_nn::AdamW::new(vars, params).unwrap();
        rate(|| {
            let (x, y) = &batches[i % batches.len()];
            i += 1;
            let logits = net.forward_composed(x, Some(&mut dropout)).unwrap();
            let loss = candle_nn::loss::cross_entropy(&logits, y).unwrap();
            let grads = loss.backward().unwrap();
            adam.step(&grads).unwrap();
        })
    };
    steps_per_s * rows as f64
}

/// Fused inference calls per second at `rows` sequences.
fn fused_infer_rate(spec: &ModelSpec, rows: usize) -> f64 {
    let named = initial_parameters(spec, 7, &Device::Cpu).unwrap();
    let net = Network::from_tensors(spec, &named.into_iter().collect()).unwrap();
    let engine = Engine::new(&net).unwrap().expect("CPU f32 network");
    let (ids, _) = random_batch(spec, rows, &mut ChaCha8Rng::seed_from_u64(2));
    rate(|| {
        std::hint::black_box(engine.probabilities(&ids, rows, spec.window));
    })
}

/// (fused, composed) inference calls per second at `rows` sequences.
fn infer_rate(spec: &ModelSpec, rows: usize) -> (f64, f64) {
    let named = initial_parameters(spec, 7, &Device::Cpu).unwrap();
    let net = Network::from_tensors(spec, &named.into_iter().collect()).unwrap();
    let engine = Engine::new(&net).unwrap().expect("CPU f32 network");
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (ids, _) = random_batch(spec, rows, &mut rng);
    let fused_rate = rate(|| {
        std::hint::black_box(engine.probabilities(&ids, rows, spec.window));
    });
    let x = Tensor::from_vec(ids, (rows, spec.window), &Device::Cpu).unwrap();
    let composed_rate = rate(|| {
        let logits = net.forward_composed(&x, None).unwrap();
        std::hint::black_box(candle_nn::ops::softmax_last_dim(&logits).unwrap());
    });
    (fused_rate, composed_rate)
}

/// (fused, composed) one-token steps per second from a carried state: what
/// `Generate` and sessions pay per token after the prompt.
fn carried_step_rate(spec: &ModelSpec) -> (f64, f64) {
    let named = initial_parameters(spec, 7, &Device::Cpu).unwrap();
    let net = Network::from_tensors(spec, &named.into_iter().collect()).unwrap();
    let engine = Engine::new(&net).unwrap().expect("CPU f32 network");
    let (prompt, _) = random_batch(spec, 1, &mut ChaCha8Rng::seed_from_u64(3));
    let (_, mut fused_state) = engine.step(&prompt, None);
    let fused_rate = rate(|| {
        let (p, s) = engine.step(&[1], Some(&fused_state));
        fused_state = std::hint::black_box(s);
        std::hint::black_box(p);
    });
    let x = Tensor::from_vec(prompt, (1, spec.window), &Device::Cpu).unwrap();
    let (_, mut composed_state) = net.forward_from(&x, None).unwrap();
    let one = Tensor::from_vec(vec![1u32], (1, 1), &Device::Cpu).unwrap();
    let composed_rate = rate(|| {
        let (logits, s) = net.forward_from(&one, Some(&composed_state)).unwrap();
        composed_state = s;
        std::hint::black_box(candle_nn::ops::softmax_last_dim(&logits).unwrap());
    });
    (fused_rate, composed_rate)
}

/// Training samples per second through the service's path on `device`:
/// `Network::forward`, the loss, backward and Adam pick the fused kernels
/// on the CPU and candle ops elsewhere, as the trainer does; reading the
/// loss each step (as the trainer does) waits for the device.
fn service_train_rate(spec: &ModelSpec, rows: usize, device: &Device) -> f64 {
    let vars: Vec<(String, Var)> = initial_parameters(spec, 7, device)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, Var::from_tensor(&t).unwrap()))
        .collect();
    let map = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let net = Network::from_tensors(spec, &map).unwrap();
    let mut adam = Adam::new(
        vars.into_iter().map(|(_, v)| v).collect(),
        lstmd::train::adam::AdamSettings {
            optimizer: lstmd::train::config::Optimizer::Adam,
            learning_rate: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            weight_decay: 0.0,
        },
    )
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let batches: Vec<(Tensor, Tensor)> = (0..8)
        .map(|_| {
            let (ids, targets) = random_batch(spec, rows, &mut rng);
            (
                Tensor::from_vec(ids, (rows, spec.window), device).unwrap(),
                Tensor::from_vec(targets, rows, device).unwrap(),
            )
        })
        .collect();
    let mut dropout = Dropout::new(3);
    let mut i = 0;
    rate(|| {
        let (x, y) = &batches[i % batches.len()];
        i += 1;
        let logits = net.forward(x, Some(&mut dropout)).unwrap();
        let loss = fused::cross_entropy(&logits, y).unwrap();
        std::hint::black_box(loss.to_scalar::<f32>().unwrap());
        let grads = loss.backward().unwrap();
        adam.step(&grads, 1.0).unwrap();
    }) * rows as f64
}

/// Inference calls per second at `rows` sequences through the service's
/// path on `device` (probabilities back on the host).
fn service_infer_rate(spec: &ModelSpec, rows: usize, device: &Device) -> f64 {
    let named = initial_parameters(spec, 7, device).unwrap();
    let net = Network::from_tensors(spec, &named.into_iter().collect()).unwrap();
    let inference = backend_for(net).unwrap();
    let (ids, _) = random_batch(spec, rows, &mut ChaCha8Rng::seed_from_u64(2));
    let sequences: Vec<Vec<u32>> = ids.chunks(spec.window).map(<[u32]>::to_vec).collect();
    rate(|| {
        std::hint::black_box(inference.probabilities(&sequences).unwrap());
    })
}

/// `BENCH_DEVICES`: one column per device.
fn compare_devices(list: &str, selected: &[(&'static str, ModelSpec)]) {
    let devices: Vec<(String, Device)> = list
        .split(',')
        .map(|d| {
            let device = lstmd::config::parse_device(d).unwrap_or_else(|e| panic!("{e}"));
            (d.trim().to_string(), device)
        })
        .collect();
    let header = |what: &str, unit: &str| {
        print!("{what:<14} {unit:>14}");
        for (name, _) in &devices {
            print!(" {name:>12}");
        }
        println!();
    };
    let row = |name: &str, unit: String, values: Vec<f64>| {
        print!("{name:<14} {unit:>14}");
        for v in values {
            print!(" {v:>12.1}");
        }
        println!();
    };
    println!("the service's paths: fused kernels on the CPU, candle ops on CUDA");
    header("train", "samples/s");
    for (name, spec) in selected {
        for rows in [64, 256, 1024] {
            let values = devices
                .iter()
                .map(|(_, d)| service_train_rate(spec, rows, d))
                .collect();
            row(name, format!("batch {rows}"), values);
        }
    }
    header("inference", "");
    for (name, spec) in selected {
        let b1 = devices
            .iter()
            .map(|(_, d)| 1e6 / service_infer_rate(spec, 1, d))
            .collect();
        row(name, "b1 us".into(), b1);
        let b1024 = devices
            .iter()
            .map(|(_, d)| 1024.0 * service_infer_rate(spec, 1024, d))
            .collect();
        row(name, "b1024 seq/s".into(), b1024);
    }
}

/// CPU time this process has used (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // utime and stime, fields 14 and 15, are the 12th and 13th after ')'.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

fn main() {
    // As `lstmd serve` does at start.
    fused::memory::keep_freed_memory();
    if let Some(macs) = std::env::var("BENCH_GEMM_MIN_MACS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        fused::matmul::set_gemm_min_macs(macs);
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    }
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    if let Ok(list) = std::env::var("BENCH_DEVICES") {
        let selected: Vec<_> = configs()
            .into_iter()
            .filter(|(n, _)| n.contains(filter.as_str()))
            .collect();
        compare_devices(&list, &selected);
        return;
    }
    println!("{}", fused::machine::Machine::detect());
    println!(
        "lstmd fused kernels: {} kernel threads, SIMD {:?}, candle matmul threads {}",
        fused::threads::threads(),
        fused::simd::level(),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_default()
    );
    println!(
        "{:<14} {:>5} {:>16} {:>16} {:>8}",
        "train", "batch", "fused samples/s", "composed", "speedup"
    );
    if let Ok(what) = std::env::var("BENCH_PROFILE") {
        let rows: usize = std::env::var("BENCH_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64);
        for (name, spec) in configs()
            .iter()
            .filter(|(n, _)| n.contains(filter.as_str()))
        {
            let cpu0 = cpu_seconds();
            let t0 = Instant::now();
            let r = match what.as_str() {
                "train" => train_rate(spec, rows, true),
                "composed" => train_rate(spec, rows, false),
                "infer1" => fused_infer_rate(spec, 1),
                _ => 1024.0 * fused_infer_rate(spec, 1024),
            };
            // Work per CPU-second is steadier than per wall-second on a
            // shared machine (with one kernel thread).
            let busy = (cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
            println!(
                "{name} {what} b{rows}: {r:.1} per s, {:.1} per CPU-s ({busy:.2} cores busy)",
                r / busy
            );
        }
        return;
    }
    let mut dropout_b64 = None;
    let selected: Vec<_> = configs()
        .into_iter()
        .filter(|(n, _)| n.contains(filter.as_str()))
        .collect();
    for (name, spec) in &selected {
        for rows in [64, 256] {
            let f = train_rate(spec, rows, true);
            let c = train_rate(spec, rows, false);
            println!("{name:<14} {rows:>5} {f:>16.0} {c:>16.0} {:>7.1}x", f / c);
            if *name == "dropout" && rows == 64 {
                dropout_b64 = Some((f, c));
            }
        }
    }
    println!(
        "{:<14} {:>16} {:>16} {:>16} {:>16}",
        "inference", "b1 fused us", "b1 composed us", "b1024 fused seq/s", "b1024 composed"
    );
    for (name, spec) in &selected {
        let (f1, c1) = infer_rate(spec, 1);
        let (fb, cb) = infer_rate(spec, 1024);
        println!(
            "{name:<14} {:>16.1} {:>16.1} {:>16.0} {:>16.0}",
            1e6 / f1,
            1e6 / c1,
            fb * 1024.0,
            cb * 1024.0
        );
    }
    println!(
        "{:<14} {:>16} {:>16}",
        "carried step", "fused us/token", "composed us/token"
    );
    for (name, spec) in selected
        .iter()
        .filter(|(_, s)| s.layers.iter().all(|l| !l.bidirectional))
    {
        let (f, c) = carried_step_rate(spec);
        println!("{name:<14} {:>16.1} {:>16.1}", 1e6 / f, 1e6 / c);
    }
    if let Some((f, c)) = dropout_b64 {
        println!("train dropout b64: fused {f:.0} samples/s, composed {c:.0} samples/s");
    }
}

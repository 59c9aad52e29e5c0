//! `cargo bench --bench predict`: Predict latency and throughput for the
//! tutorial's `dropout` model (random weights; the arithmetic is the same),
//! in process and over gRPC on loopback, with dynamic batching on and off,
//! all in one run so the figures compare on the same machine.
//! `BENCH_DEVICES=cpu,cuda` runs the server on each device in turn and
//! prints one column per device.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use lstmd::config::ServeArgs;
use lstmd::nn::metadata::{ModelInfo, FORMAT};
use lstmd::nn::{initial_parameters, spec::preset};
use lstmd::predict::SequenceInput;
use lstmd::proto as pb;
use lstmd::proto::{
    model_service_client::ModelServiceClient, prediction_service_client::PredictionServiceClient,
};
use tonic::transport::Channel;

const SECONDS: f64 = 2.0;

fn sequence(i: u64) -> Vec<u32> {
    (0..10).map(|t| ((i * 7 + t * 13) % 100) as u32).collect()
}

fn request(i: u64) -> pb::PredictRequest {
    pb::PredictRequest {
        model: "dropout".into(),
        version: 0,
        sequences: vec![pb::Sequence {
            ids: sequence(i),
            text: String::new(),
        }],
        top_k: Some(5),
        ..Default::default()
    }
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Registers the `dropout` preset with fresh weights through ImportModel.
async fn import_model(addr: std::net::SocketAddr) {
    import_spec(addr, "dropout", preset("dropout").unwrap()).await;
}

/// Registers `spec` with fresh weights as the next version of `name`.
async fn import_spec(addr: std::net::SocketAddr, name: &str, spec: lstmd::nn::ModelSpec) {
    let params = initial_parameters(&spec, 1, &Device::Cpu).unwrap();
    let weights = lstmd::train::to_safetensors(&params).unwrap();
    let info = ModelInfo {
        format: FORMAT.into(),
        created_at_ms: 0,
        spec,
        vocabulary: None,
        training: serde_json::Value::Null,
        history: vec![],
        dataset_id: String::new(),
        job_id: String::new(),
        tuning: None,
    };
    let metadata = serde_json::to_vec(&info).unwrap();
    let chunks = vec![
        pb::ImportModelChunk {
            name: name.into(),
            file: "model.safetensors".into(),
            data: weights,
            ..Default::default()
        },
        pb::ImportModelChunk {
            name: name.into(),
            file: "metadata.json".into(),
            data: metadata,
            ..Default::default()
        },
    ];
    ModelServiceClient::new(channel(addr).await)
        .import_model(tokio_stream::iter(chunks))
        .await
        .unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Sequences/s with `clients` concurrent callers, each on its own
/// connection, calling Predict back to back for SECONDS.
async fn throughput(addr: std::net::SocketAddr, clients: usize) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(SECONDS);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = PredictionServiceClient::new(channel(addr).await);
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            let mut i = c as u64 * 1_000_000;
            while Instant::now() < deadline {
                client.predict(request(i)).await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// One server's figures: batch-1 latency (p50, p99, µs) in process and
/// over gRPC, and throughput (sequences/s) by clients, batching on and off.
struct Figures {
    in_process: (f64, f64),
    over_grpc: (f64, f64),
    /// (clients, batching, sequences/s)
    throughput: Vec<(usize, bool, f64)>,
}

impl Figures {
    fn rate(&self, clients: usize, batching: bool) -> f64 {
        self.throughput
            .iter()
            .find(|r| r.0 == clients && r.1 == batching)
            .expect("measured")
            .2
    }
}

async fn measure(device: &str) -> Figures {
    let mut figures = Figures {
        in_process: (0.0, 0.0),
        over_grpc: (0.0, 0.0),
        throughput: Vec::new(),
    };
    for batching in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut args =
            ServeArgs::defaults("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
        args.device = device.to_string();
        if !batching {
            args.limits.max_batch = 1;
            args.limits.max_batch_delay = 0;
        }
        let server = lstmd::server::start(args, std::future::pending())
            .await
            .unwrap();
        import_model(server.addr).await;
        let predictor = Arc::clone(server.predictor());
        let mut grpc = PredictionServiceClient::new(channel(server.addr).await);
        for i in 0..50 {
            grpc.predict(request(i)).await.unwrap();
        }
        if batching {
            let mut in_process = Vec::new();
            let mut over_grpc = Vec::new();
            for i in 0..500u64 {
                let t = Instant::now();
                predictor
                    .predict(
                        "dropout",
                        None,
                        vec![SequenceInput::Ids(sequence(i))],
                        Some(5),
                        false,
                    )
                    .await
                    .unwrap();
                in_process.push(t.elapsed());
                let t = Instant::now();
                grpc.predict(request(i)).await.unwrap();
                over_grpc.push(t.elapsed());
            }
            in_process.sort();
            over_grpc.sort();
            let p = |v: &[Duration]| (micros(percentile(v, 0.5)), micros(percentile(v, 0.99)));
            figures.in_process = p(&in_process);
            figures.over_grpc = p(&over_grpc);
        }
        drop(predictor);
        for clients in [1, 16, 64] {
            let rate = throughput(server.addr, clients).await;
            figures.throughput.push((clients, batching, rate));
        }
        server.stop().await.unwrap();
    }
    figures
}

/// In-process batch-1 Predict p50 (µs) of the latest version and of a pinned
/// one, with `dropout` alone in the registry and then beside 999 other
/// (tiny) models: resolving the latest version must not grow with them.
async fn registry_rows() -> Vec<(usize, f64, f64)> {
    let dir = tempfile::tempdir().unwrap();
    let args = ServeArgs::defaults("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    let server = lstmd::server::start(args, std::future::pending())
        .await
        .unwrap();
    import_model(server.addr).await;
    let predictor = Arc::clone(server.predictor());
    let mut tiny = preset("dropout").unwrap();
    tiny.vocab_size = 2;
    tiny.embedding_dim = 1;
    tiny.layers.truncate(1);
    tiny.layers[0].units = 1;
    let mut rows = Vec::new();
    let mut registered = 1;
    for models in [1, 1000] {
        while registered < models {
            import_spec(server.addr, &format!("filler-{registered}"), tiny.clone()).await;
            registered += 1;
        }
        let p50 = |version: Option<u32>| {
            let predictor = Arc::clone(&predictor);
            async move {
                let mut times = Vec::new();
                for i in 0..500u64 {
                    let t = Instant::now();
                    let input = vec![SequenceInput::Ids(sequence(i))];
                    predictor
                        .predict("dropout", version, input, Some(5), false)
                        .await
                        .unwrap();
                    times.push(t.elapsed());
                }
                times.sort();
                micros(percentile(&times, 0.5))
            }
        };
        rows.push((models, p50(None).await, p50(Some(1)).await));
    }
    drop(predictor);
    server.stop().await.unwrap();
    rows
}

const MODEL: &str = "`dropout` preset (Embedding 100x8, LSTM 64, LSTM 64, Dense 100), window 10";

fn print_registry(rows: &[(usize, f64, f64)]) {
    println!("in-process batch-1 p50 by registry size (us):");
    println!("{:>8} {:>10} {:>10}", "models", "latest", "pinned v1");
    for (models, latest, pinned) in rows {
        println!("{models:>8} {latest:>10.1} {pinned:>10.1}");
    }
}

fn print_one(f: &Figures) {
    println!("predict benchmark: {MODEL}");
    println!(
        "latency batch 1, in process:    p50 {:>8.1} us   p99 {:>8.1} us",
        f.in_process.0, f.in_process.1
    );
    println!(
        "latency batch 1, gRPC loopback: p50 {:>8.1} us   p99 {:>8.1} us",
        f.over_grpc.0, f.over_grpc.1
    );
    println!("throughput over gRPC (sequences/s), {SECONDS} s per row:");
    println!(
        "{:>8} {:>14} {:>14} {:>8}",
        "clients", "batching on", "batching off", "ratio"
    );
    for clients in [1, 16, 64] {
        let (on, off) = (f.rate(clients, true), f.rate(clients, false));
        println!("{clients:>8} {on:>14.0} {off:>14.0} {:>7.2}x", on / off);
    }
}

fn print_devices(devices: &[String], all: &[Figures]) {
    println!("predict benchmark by device: {MODEL}");
    print!("{:<36}", "");
    for d in devices {
        print!(" {d:>12}");
    }
    println!();
    let row = |label: String, value: &dyn Fn(&Figures) -> f64| {
        print!("{label:<36}");
        for f in all {
            print!(" {:>12.1}", value(f));
        }
        println!();
    };
    row("latency b1 in process p50 us".into(), &|f| f.in_process.0);
    row("latency b1 in process p99 us".into(), &|f| f.in_process.1);
    row("latency b1 gRPC p50 us".into(), &|f| f.over_grpc.0);
    row("latency b1 gRPC p99 us".into(), &|f| f.over_grpc.1);
    for clients in [1, 16, 64] {
        for batching in [true, false] {
            let label = format!(
                "seq/s {clients} clients, batching {}",
                if batching { "on" } else { "off" }
            );
            row(label, &|f| f.rate(clients, batching));
        }
    }
}

async fn run() {
    match std::env::var("BENCH_DEVICES") {
        Ok(list) => {
            let devices: Vec<String> = list.split(',').map(|d| d.trim().to_string()).collect();
            let mut all = Vec::new();
            for d in &devices {
                all.push(measure(d).await);
            }
            print_devices(&devices, &all);
        }
        Err(_) => {
            print_one(&measure("cpu").await);
            print_registry(&registry_rows().await);
        }
    }
}

fn main() {
    // As `lstmd serve` does (see README: threads).
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    }
    println!("{}", lstmd::nn::fused::machine::Machine::detect());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

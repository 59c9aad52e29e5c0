//! Streams a file to `DatasetService/UploadDataset` in chunks, with memory
//! bounded by the chunk size, and prints the dataset and the throughput.
//!
//! ```sh
//! cargo run --release --example upload -- --name macbeth tests/data/macbeth.txt
//! cargo run --release --example upload -- --name ids --tokenizer ids --vocab-size 50000 tokens.u32
//! ```
use std::io::Read;
use std::time::Instant;

use clap::Parser;
use lstmd::proto as pb;
use lstmd::proto::dataset_service_client::DatasetServiceClient;
use pb::upload_dataset_request::Part;

#[derive(Parser)]
struct Args {
    /// The server.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// The dataset's name.
    #[arg(long)]
    name: String,
    /// char, byte (UTF-8 text) or ids (little-endian u32).
    #[arg(long, default_value = "char")]
    tokenizer: String,
    /// Raw ids: the vocabulary size.
    #[arg(long, default_value_t = 0)]
    vocab_size: u32,
    /// Char tokenizer: keep at most this many ids (0: all).
    #[arg(long, default_value_t = 0)]
    max_vocab_size: u32,
    /// Chunk size in KiB.
    #[arg(long, default_value_t = 1024)]
    chunk_kib: usize,
    file: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tokenizer = match args.tokenizer.as_str() {
        "char" => pb::Tokenizer::Char,
        "byte" => pb::Tokenizer::Byte,
        "ids" => pb::Tokenizer::Ids,
        other => anyhow::bail!("--tokenizer must be char, byte or ids, got {other:?}"),
    };
    let mut file = std::fs::File::open(&args.file)?;
    let mut client = DatasetServiceClient::connect(args.addr.clone())
        .await?
        .max_encoding_message_size(usize::MAX);
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(pb::UploadDatasetRequest {
        part: Some(Part::Header(pb::UploadDatasetHeader {
            name: args.name.clone(),
            tokenizer: tokenizer as i32,
            vocab_size: args.vocab_size,
            max_vocab_size: args.max_vocab_size,
            vocabulary_from: None,
        })),
    })
    .await?;
    // A reader thread feeds the stream one chunk at a time.
    let chunk = args.chunk_kib.max(1) << 10;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut sent = 0;
        loop {
            let mut buf = vec![0u8; chunk];
            let mut filled = 0;
            while filled < chunk {
                match file.read(&mut buf[filled..])? {
                    0 => break,
                    n => filled += n,
                }
            }
            if filled == 0 {
                return Ok(sent);
            }
            buf.truncate(filled);
            sent += filled as u64;
            let message = pb::UploadDatasetRequest {
                part: Some(Part::Chunk(buf)),
            };
            if tx.blocking_send(message).is_err() {
                // The server answered early (an error): stop reading.
                return Ok(sent);
            }
        }
    });
    let started = Instant::now();
    let result = client
        .upload_dataset(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let sent = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))??;
    let dataset = result?.into_inner();
    println!("{dataset:#?}");
    println!(
        "uploaded {sent} bytes in {seconds:.2} s: {:.1} MB/s",
        sent as f64 / seconds / 1e6
    );
    Ok(())
}

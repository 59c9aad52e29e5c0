//! How the fused kernels use the cores: one pool of worker threads, shared
//! by every model in the process. Work is split two ways:
//! * batch-parallel: the recurrent loop of a layer runs as independent
//!   (direction, block of rows) items, one per worker, with no
//!   synchronisation between time steps;
//! * gemm-parallel: the large products outside the loop (input projection,
//!   weight gradients) let gemm split them over the pool.
//!
//! The pool size is set once per process ([`configure`], the server's
//! `--kernel-threads`, or `LSTMD_KERNEL_THREADS`); it defaults to the
//! number of cores.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

static REQUESTED: AtomicUsize = AtomicUsize::new(0);
/// Smallest block of rows worth a worker of its own in the recurrent loop.
static MIN_ROWS: AtomicUsize = AtomicUsize::new(16);
static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();

/// Sets the pool size; takes effect only before the first fused call.
/// 0 means the number of cores.
pub fn configure(threads: usize) {
    REQUESTED.store(threads, Ordering::Relaxed);
}

/// Smallest number of batch rows a worker of the recurrent loop gets;
/// 0 turns batch splitting off.
pub fn set_min_rows_per_worker(rows: usize) {
    MIN_ROWS.store(rows, Ordering::Relaxed);
}

fn min_rows() -> usize {
    MIN_ROWS.load(Ordering::Relaxed)
}

pub fn pool() -> &'static rayon::ThreadPool {
    POOL.get_or_init(|| {
        let mut n = REQUESTED.load(Ordering::Relaxed);
        if n == 0 {
            n = std::env::var("LSTMD_KERNEL_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
        if n == 0 {
            n = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("lstmd-kernel-{i}"))
            .build()
            .expect("the kernel thread pool starts")
    })
}

/// Workers in the pool.
pub fn threads() -> usize {
    pool().current_num_threads()
}

/// Runs `f(0..n)`, spread over the pool when there is more than one item
/// and more than one worker; inline otherwise.
pub fn for_each(n: usize, f: impl Fn(usize) + Send + Sync) {
    if n <= 1 || threads() <= 1 {
        (0..n).for_each(f);
    } else {
        use rayon::prelude::*;
        pool().install(|| (0..n).into_par_iter().for_each(f));
    }
}

/// Runs `f` inside the pool, so gemm's own splitting uses its workers.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if threads() <= 1 {
        f()
    } else {
        pool().install(f)
    }
}

/// Splits `rows` into blocks for the recurrent loop of a layer with `dirs`
/// directions: as many items as workers, each with at least
/// `min_rows_per_worker` rows. Returns the block boundaries.
pub fn row_blocks(rows: usize, dirs: usize) -> Vec<(usize, usize)> {
    let workers = threads();
    let min = min_rows();
    let per_dir = if min == 0 || workers <= dirs {
        1
    } else {
        (workers / dirs).min(rows / min).max(1)
    };
    (0..per_dir)
        .map(|i| (rows * i / per_dir, rows * (i + 1) / per_dir))
        .filter(|(a, b)| b > a)
        .collect()
}

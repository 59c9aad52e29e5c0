//! How the fused kernels use the cores: `threads` workers in all, the
//! calling thread plus `threads - 1` helpers in a pool shared by every
//! model in the process. The caller always takes part: a blocked caller
//! beside a full pool would leave one more runnable thread than cores
//! during the serial parts of a step. Work is split two ways:
//! * batch-parallel: the recurrent loop of a layer runs as independent
//!   (direction, block of rows) items, one per worker, with no
//!   synchronisation between time steps; where the batch is too small to
//!   split (or splitting is off), each step's products are split instead;
//! * product-parallel: the large products outside the loop (input
//!   projection, weight gradients, dx) are split by rows.
//!
//! The count is set once per process ([`configure`], the server's
//! `--kernel-threads`, or `LSTMD_KERNEL_THREADS`); it defaults to the
//! number of cores.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

static REQUESTED: AtomicUsize = AtomicUsize::new(0);
/// Smallest block of rows worth a worker of its own in the recurrent loop
/// (usize::MAX: not read from the environment yet).
static MIN_ROWS: AtomicUsize = AtomicUsize::new(usize::MAX);
const DEFAULT_MIN_ROWS: usize = 16;
static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();

/// Sets the number of workers (the caller included); takes effect only
/// before the first fused call. 0 means the number of cores.
pub fn configure(threads: usize) {
    REQUESTED.store(threads, Ordering::Relaxed);
}

/// Smallest number of batch rows a worker of the recurrent loop gets
/// (default 16, or `LSTMD_KERNEL_MIN_ROWS`); 0 turns batch splitting off,
/// so each step's products are split over the workers instead.
pub fn set_min_rows_per_worker(rows: usize) {
    MIN_ROWS.store(rows, Ordering::Relaxed);
}

fn min_rows() -> usize {
    let v = MIN_ROWS.load(Ordering::Relaxed);
    if v != usize::MAX {
        return v;
    }
    let v = std::env::var("LSTMD_KERNEL_MIN_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MIN_ROWS);
    MIN_ROWS.store(v, Ordering::Relaxed);
    v
}

fn requested() -> usize {
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
    n
}

/// The helpers' pool; None with one worker.
fn pool() -> Option<&'static rayon::ThreadPool> {
    POOL.get_or_init(|| {
        let helpers = requested().saturating_sub(1);
        (helpers > 0).then(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(helpers)
                .thread_name(|i| format!("lstmd-kernel-{i}"))
                .build()
                .expect("the kernel thread pool starts")
        })
    })
    .as_ref()
}

/// Workers, the caller included.
pub fn threads() -> usize {
    pool().map_or(1, |p| p.current_num_threads() + 1)
}

/// Runs `f(0..n)` on the caller and the helpers, items handed out one at
/// a time; inline with one item or one worker.
pub fn for_each(n: usize, f: impl Fn(usize) + Send + Sync) {
    let pool = match pool() {
        Some(p) if n > 1 => p,
        _ => return (0..n).for_each(f),
    };
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        f(i);
    };
    pool.in_place_scope(|scope| {
        for _ in 0..pool.current_num_threads().min(n - 1) {
            scope.spawn(|_| work());
        }
        work();
    });
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

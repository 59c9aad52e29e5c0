//! How the fused kernels use the cores: `threads` workers in all, the
//! calling thread plus `threads - 1` helper threads shared by every model
//! in the process. The caller always takes part (a blocked caller beside
//! a full pool would leave one more runnable thread than cores during the
//! serial parts of a step). Work is split two ways:
//! * batch-parallel: the recurrent loop of a layer runs as independent
//!   (direction, block of rows) items, one per worker, with no
//!   synchronisation between time steps; where the batch is too small to
//!   split (or splitting is off), each step's products are split instead;
//! * product-parallel: the large products outside the loop (input
//!   projection, weight gradients, dx) are split by rows.
//!
//! A training step hands the helpers a dozen short jobs with serial work
//! between them, so helpers spin for a while after each job before they
//! sleep: waking a sleeping thread costs more than most of those jobs.
//! One caller at a time uses the helpers; a second concurrent caller (and
//! any nested call) runs its items itself.
//!
//! The count is set once per process ([`configure`], the server's
//! `--kernel-threads`, or `LSTMD_KERNEL_THREADS`); it defaults to the
//! number of cores.
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

static REQUESTED: AtomicUsize = AtomicUsize::new(0);
/// Smallest block of rows worth a worker of its own in the recurrent loop
/// (usize::MAX: not read from the environment yet).
static MIN_ROWS: AtomicUsize = AtomicUsize::new(usize::MAX);
const DEFAULT_MIN_ROWS: usize = 16;
/// How long an idle helper keeps looking for work before it sleeps.
const SPIN: Duration = Duration::from_micros(300);
/// Busy-wait rounds before a looking helper starts yielding its core.
const HOT_SPINS: u32 = 2000;

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

/// A job as the helpers see it: the caller's closure, alive until every
/// item has finished.
struct Job {
    f: *const (dyn Fn(usize) + Sync),
}

/// The job word: `epoch` (odd while a job is open) in the high 24 bits,
/// the item count and the next unclaimed item in 20 bits each, so a claim
/// is one compare-and-swap that also checks the job is still the same.
fn pack(epoch: u64, n: u64, next: u64) -> u64 {
    (epoch << 40) | (n << 20) | next
}

fn unpack(w: u64) -> (u64, u64, u64) {
    (w >> 40, (w >> 20) & 0xF_FFFF, w & 0xF_FFFF)
}

const MAX_ITEMS: usize = 0xF_FFFF;

struct Team {
    helpers: OnceLock<Vec<Thread>>,
    sleeping: Vec<AtomicBool>,
    word: AtomicU64,
    job: AtomicPtr<Job>,
    done: AtomicUsize,
    /// Set when an item panicked on a helper; the caller re-raises it.
    panicked: AtomicBool,
    /// One caller at a time.
    caller: Mutex<()>,
}

thread_local! {
    /// Set on helpers, and on a caller while it runs a job: nested calls
    /// run inline.
    static IN_TEAM: Cell<bool> = const { Cell::new(false) };
}

static TEAM: OnceLock<Option<&'static Team>> = OnceLock::new();

fn team() -> Option<&'static Team> {
    *TEAM.get_or_init(|| {
        let helpers = requested().saturating_sub(1);
        if helpers == 0 {
            return None;
        }
        let team: &'static Team = Box::leak(Box::new(Team {
            helpers: OnceLock::new(),
            sleeping: (0..helpers).map(|_| AtomicBool::new(false)).collect(),
            word: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            caller: Mutex::new(()),
        }));
        let handles: Vec<Thread> = (0..helpers)
            .map(|i| {
                std::thread::Builder::new()
                    .name(format!("lstmd-kernel-{i}"))
                    .spawn(move || helper(team, i))
                    .expect("the kernel helper threads start")
                    .thread()
                    .clone()
            })
            .collect();
        let _ = team.helpers.set(handles);
        Some(team)
    })
}

/// Takes items of the open job until none are left; true if any ran.
fn work(team: &Team) -> bool {
    let mut ran = false;
    loop {
        let w = team.word.load(Ordering::Acquire);
        let (epoch, n, next) = unpack(w);
        if epoch % 2 == 0 || next >= n {
            return ran;
        }
        // Read the job before claiming: it cannot change while this word
        // (same epoch) is current, and is only used if the claim succeeds.
        let job = team.job.load(Ordering::Acquire);
        if team
            .word
            .compare_exchange_weak(
                w,
                pack(epoch, n, next + 1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            // SAFETY: the claim succeeded, so the job is open and its
            // closure alive until `done` counts this item.
            let f = unsafe { &*(*job).f };
            let item = std::panic::AssertUnwindSafe(|| f(next as usize));
            if std::panic::catch_unwind(item).is_err() {
                team.panicked.store(true, Ordering::Release);
            }
            team.done.fetch_add(1, Ordering::Release);
            ran = true;
        }
    }
}

fn helper(team: &'static Team, i: usize) {
    IN_TEAM.with(|c| c.set(true));
    loop {
        if work(team) {
            continue;
        }
        // Spin a little for the next job, then keep looking but yield the
        // core to anything else runnable (on a busy machine, a spinning
        // helper would take time from the caller itself), then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let (epoch, n, next) = unpack(team.word.load(Ordering::Acquire));
            if epoch % 2 == 1 && next < n {
                break;
            }
            spins += 1;
            if spins < HOT_SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                team.sleeping[i].store(true, Ordering::SeqCst);
                let (epoch, n, next) = unpack(team.word.load(Ordering::SeqCst));
                if !(epoch % 2 == 1 && next < n) {
                    std::thread::park();
                }
                team.sleeping[i].store(false, Ordering::SeqCst);
                break;
            }
        }
    }
}

/// Workers, the caller included.
pub fn threads() -> usize {
    team().map_or(1, |t| t.sleeping.len() + 1)
}

/// Runs `f(0..n)` on the caller and the helpers, items handed out one at
/// a time; inline with one item, one worker, when nested, or when another
/// thread is using the helpers.
pub fn for_each(n: usize, f: impl Fn(usize) + Send + Sync) {
    let team = match team() {
        Some(t) if n > 1 && n <= MAX_ITEMS && !IN_TEAM.with(Cell::get) => t,
        _ => return (0..n).for_each(f),
    };
    let Ok(_guard) = team.caller.try_lock() else {
        return (0..n).for_each(f);
    };
    IN_TEAM.with(|c| c.set(true));
    let dynf: &(dyn Fn(usize) + Sync) = &f;
    // SAFETY: the lifetime is erased only while this call waits for every
    // item to finish; helpers use the closure only for items they claimed.
    let job = Job {
        f: unsafe {
            std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(dynf)
        },
    };
    let (epoch, _, _) = unpack(team.word.load(Ordering::Relaxed));
    let open = (epoch + 1) & 0xFF_FFFF;
    team.done.store(0, Ordering::Relaxed);
    team.job
        .store(&job as *const Job as *mut Job, Ordering::Release);
    team.word.store(pack(open, n as u64, 0), Ordering::SeqCst);
    for (i, sleeping) in team.sleeping.iter().enumerate() {
        if sleeping.load(Ordering::SeqCst) {
            if let Some(h) = team.helpers.get().and_then(|h| h.get(i)) {
                h.unpark();
            }
        }
    }
    work(team);
    // Wait for items the helpers are still running.
    let mut spins = 0u32;
    while team.done.load(Ordering::Acquire) < n {
        spins += 1;
        if spins < HOT_SPINS {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    team.word
        .store(pack((open + 1) & 0xFF_FFFF, 0, 0), Ordering::Release);
    team.job.store(std::ptr::null_mut(), Ordering::Release);
    IN_TEAM.with(|c| c.set(false));
    if team.panicked.swap(false, Ordering::AcqRel) {
        panic!("a fused-kernel worker panicked");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once_including_nested_calls() {
        for n in [0, 1, 2, 3, 17, 200] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for_each(n, |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
                // Nested calls run inline.
                let inner = AtomicUsize::new(0);
                for_each(3, |_| {
                    inner.fetch_add(1, Ordering::Relaxed);
                });
                assert_eq!(inner.load(Ordering::Relaxed), 3);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "n = {n}"
            );
        }
    }

    #[test]
    fn concurrent_callers_each_finish() {
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let sum = AtomicUsize::new(0);
                        for_each(9, |i| {
                            sum.fetch_add(i, Ordering::Relaxed);
                        });
                        assert_eq!(sum.load(Ordering::Relaxed), 36);
                    }
                });
            }
        });
    }
}

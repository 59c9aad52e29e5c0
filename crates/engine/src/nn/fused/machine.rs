//! The machine the kernels run on, as benchmarks print it: CPU model, the
//! vector extensions that matter to them, and the data caches. Read from
//! Linux's /proc and /sys; elsewhere the parts it cannot read say so.
use std::fmt;

use super::simd;

/// What the kernels were chosen for on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// `model name` of /proc/cpuinfo, or "unknown CPU".
    pub model: String,
    /// The kernel level [`simd::level`] chose.
    pub level: simd::Level,
    /// Extensions the kernels use or could (AVX2, FMA, AVX-512, bf16, AMX).
    pub extensions: Vec<&'static str>,
    /// Data (or unified) cache sizes in bytes by level, as the first core
    /// sees them (L3 is usually shared).
    pub caches: Vec<(u32, u64)>,
}

impl Machine {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown CPU".into()),
            level: simd::level(),
            extensions: extensions(&cpuinfo),
            caches: caches(std::path::Path::new("/sys/devices/system/cpu/cpu0/cache")),
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CPU {}; kernels {:?}", self.model, self.level)?;
        if !self.extensions.is_empty() {
            write!(f, " (has {})", self.extensions.join(" "))?;
        }
        match self.caches.as_slice() {
            [] => write!(f, "; caches unknown"),
            caches => {
                let sizes: Vec<String> = caches
                    .iter()
                    .map(|(level, bytes)| format!("L{level} {}", kib(*bytes)))
                    .collect();
                write!(f, "; caches {}", sizes.join(", "))
            }
        }
    }
}

fn kib(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b => format!("{} KiB", b >> 10),
    }
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// The /proc/cpuinfo flags worth naming, in the order named.
const FLAGS: [(&str, &str); 7] = [
    ("avx2", "AVX2"),
    ("fma", "FMA"),
    ("avx512f", "AVX-512"),
    ("avx512_bf16", "AVX512_BF16"),
    ("avx512_fp16", "AVX512_FP16"),
    ("amx_bf16", "AMX-BF16"),
    ("avx_vnni", "AVX-VNNI"),
];

fn extensions(cpuinfo: &str) -> Vec<&'static str> {
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags")?.split_once(':'))
        .map(|(_, v)| v.split_whitespace().collect())
        .unwrap_or_default();
    FLAGS
        .iter()
        .filter(|(flag, _)| flags.contains(flag))
        .map(|(_, name)| *name)
        .collect()
}

/// Sizes of the data and unified caches under a cpu's `cache` folder
/// (`index*/{level,type,size}`), by level.
fn caches(dir: &std::path::Path) -> Vec<(u32, u64)> {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).ok();
    let mut out: Vec<(u32, u64)> = (0..8)
        .filter_map(|i| {
            let index = dir.join(format!("index{i}"));
            let kind = read(index.join("type"))?;
            if kind.trim() == "Instruction" {
                return None;
            }
            let level = read(index.join("level"))?.trim().parse().ok()?;
            Some((level, parse_size(read(index.join("size"))?.trim())?))
        })
        .collect();
    out.sort();
    out
}

/// `32K`, `2048K`, `32M` as bytes.
fn parse_size(s: &str) -> Option<u64> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().ok()?;
    match unit {
        "" => Some(n),
        "K" => Some(n << 10),
        "M" => Some(n << 20),
        "G" => Some(n << 30),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_model_flags_and_cache_sizes() {
        let cpuinfo = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\n\
                       flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 amx_bf16\n";
        assert_eq!(
            cpu_model(cpuinfo).as_deref(),
            Some("Intel(R) Xeon(R) Platinum 8481C")
        );
        assert_eq!(
            extensions(cpuinfo),
            ["AVX2", "FMA", "AVX-512", "AVX512_BF16", "AMX-BF16"]
        );
        assert_eq!(parse_size("48K"), Some(48 << 10));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("12Q"), None);
        let dir = tempfile::tempdir().unwrap();
        for (i, (level, kind, size)) in [
            (1, "Data", "48K"),
            (1, "Instruction", "32K"),
            (2, "Unified", "2048K"),
        ]
        .iter()
        .enumerate()
        {
            let index = dir.path().join(format!("index{i}"));
            std::fs::create_dir_all(&index).unwrap();
            std::fs::write(index.join("level"), format!("{level}\n")).unwrap();
            std::fs::write(index.join("type"), format!("{kind}\n")).unwrap();
            std::fs::write(index.join("size"), format!("{size}\n")).unwrap();
        }
        let caches = caches(dir.path());
        assert_eq!(caches, [(1, 48 << 10), (2, 2 << 20)]);
        let machine = Machine {
            model: "X".into(),
            level: simd::Level::V4,
            extensions: vec!["AVX2"],
            caches,
        };
        assert_eq!(
            machine.to_string(),
            "CPU X; kernels V4 (has AVX2); caches L1 48 KiB, L2 2 MiB"
        );
    }
}

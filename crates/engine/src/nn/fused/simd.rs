//! Runtime choice of the widest vector instructions the CPU has, and the
//! vectorisable activation math the fused kernels share.
//!
//! Kernels are written once as plain loops over slices, `#[inline(always)]`
//! and generic over `FMA`; [`multiversion!`] instantiates them inside
//! functions compiled for AVX-512 and for AVX2 + FMA, and picks one at run
//! time, so the loops vectorise without `-C target-cpu`.
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// AVX-512 (F, VL, DQ, BW) with FMA: 16 floats a vector.
    V4,
    /// AVX2 with FMA: 8 floats a vector.
    V3,
    /// Whatever the build targets (SSE2 on x86-64).
    Base,
}

/// The level this CPU supports; `LSTMD_SIMD=base|v3|v4` caps it (for
/// testing the narrower paths on a wide machine).
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let detected = detect();
        let cap = match std::env::var("LSTMD_SIMD").ok().as_deref() {
            Some("base") => Level::Base,
            Some("v3") => Level::V3,
            _ => Level::V4,
        };
        match (detected, cap) {
            (_, Level::Base) | (Level::Base, _) => Level::Base,
            (Level::V4, Level::V4) => Level::V4,
            _ => Level::V3,
        }
    })
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    if is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("avx2")
    {
        Level::V4
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        Level::V3
    } else {
        Level::Base
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Base
}

/// Defines `$vis fn $name(args)` that runs `$generic::<true>` compiled for
/// AVX-512 or AVX2 + FMA when the CPU has them, else `$generic::<false>`.
/// The generic function must be `#[inline(always)]` and take its `FMA`
/// flag as its only const parameter. Exported: lstmd-core's Adam update
/// is compiled the same way.
#[macro_export]
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $generic:ident) => {
        $(#[$meta])*
        ///
        /// # Safety
        /// Every pointer must cover the rows and widths the other arguments
        /// name, and no two workers may write the same rows.
        #[allow(clippy::too_many_arguments)]
        $vis unsafe fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,bmi1,bmi2,lzcnt,popcnt,f16c")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4($($arg: $ty),*) {
                    $generic::<true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,popcnt,f16c")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3($($arg: $ty),*) {
                    $generic::<true>($($arg),*)
                }
                match $crate::nn::fused::simd::level() {
                    // SAFETY: level() saw these features on this CPU.
                    $crate::nn::fused::simd::Level::V4 => return unsafe { v4($($arg),*) },
                    $crate::nn::fused::simd::Level::V3 => return unsafe { v3($($arg),*) },
                    $crate::nn::fused::simd::Level::Base => {}
                }
            }
            $generic::<false>($($arg),*)
        }
    };
}
pub use crate::multiversion;

/// `a * b + c`, fused where the instantiation has FMA.
#[inline(always)]
pub fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// e^x, Cephes' single-precision polynomial (about 1 ulp on the range
/// that matters here); inputs are clamped to [-88, 88]. Written with
/// selects and bit arithmetic only (no saturating casts, no branches), so
/// loops over it vectorise.
#[inline(always)]
pub fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it to an integral float of magnitude below 2^22
    // puts the integer in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = if x < -88.0 { -88.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let n = madd::<FMA>(x, LOG2E, 0.5).floor();
    let r = madd::<FMA>(n, -C2, madd::<FMA>(n, -C1, x));
    let r2 = r * r;
    let mut p = 1.987_569_1e-4;
    p = madd::<FMA>(p, r, 1.398_199_9e-3);
    p = madd::<FMA>(p, r, 8.333_452e-3);
    p = madd::<FMA>(p, r, 4.166_579_6e-2);
    p = madd::<FMA>(p, r, 1.666_666_5e-1);
    p = madd::<FMA>(p, r, 5e-1);
    let y = madd::<FMA>(p, r2, r) + 1.0;
    let biased = (n + MAGIC)
        .to_bits()
        .wrapping_sub(MAGIC.to_bits())
        .wrapping_add(127);
    y * f32::from_bits(biased << 23)
}

/// The logistic function 1 / (1 + e^-x).
#[inline(always)]
pub fn sigmoid<const FMA: bool>(x: f32) -> f32 {
    1.0 / (1.0 + exp::<FMA>(-x))
}

/// tanh(x) as a rational function (Eigen's single-precision one): within
/// 4 ulp (about 4e-7 relative), exact odd symmetry, saturating to ±1;
/// about a third of the work of an exp-based form.
#[inline(always)]
pub fn tanh<const FMA: bool>(x: f32) -> f32 {
    const CLAMP: f32 = 7.998_811_7;
    let xc = if x < -CLAMP { -CLAMP } else { x };
    let xc = if xc > CLAMP { CLAMP } else { xc };
    let x2 = xc * xc;
    let mut p = -2.760_768_5e-16;
    p = madd::<FMA>(p, x2, 2.000_188e-13);
    p = madd::<FMA>(p, x2, -8.604_672e-11);
    p = madd::<FMA>(p, x2, 5.122_297e-8);
    p = madd::<FMA>(p, x2, 1.485_722_4e-5);
    p = madd::<FMA>(p, x2, 6.372_619_3e-4);
    p = madd::<FMA>(p, x2, 4.893_524_6e-3);
    let mut q = 1.198_258_4e-6;
    q = madd::<FMA>(q, x2, 1.185_347e-4);
    q = madd::<FMA>(q, x2, 2.268_434_6e-3);
    q = madd::<FMA>(q, x2, 4.893_525e-3);
    xc * p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> impl Iterator<Item = f32> {
        (-400_000..=400_000).map(|i| i as f32 * 5e-5)
    }

    #[test]
    fn activations_are_accurate() {
        let (mut e_exp, mut e_sig, mut e_tanh) = (0f64, 0f64, 0f64);
        for x in grid().chain([-100.0, -88.0, -30.0, 30.0, 88.0, 100.0]) {
            for fma in [false, true] {
                let (ex, sg, th) = if fma {
                    (exp::<true>(x), sigmoid::<true>(x), tanh::<true>(x))
                } else {
                    (exp::<false>(x), sigmoid::<false>(x), tanh::<false>(x))
                };
                let xd = x as f64;
                if xd.abs() <= 80.0 {
                    e_exp = e_exp.max((ex as f64 - xd.exp()).abs() / xd.exp());
                }
                let s = 1.0 / (1.0 + (-xd).exp());
                e_sig = e_sig.max((sg as f64 - s).abs() / s.clamp(1e-30, 1.0));
                let t = xd.tanh();
                e_tanh = e_tanh.max((th as f64 - t).abs() / t.abs().max(1e-30));
            }
        }
        assert!(e_exp < 4e-7, "exp relative error {e_exp:e}");
        assert!(e_sig < 4e-7, "sigmoid relative error {e_sig:e}");
        assert!(e_tanh < 5e-7, "tanh relative error {e_tanh:e}");
        assert_eq!(tanh::<false>(0.0), 0.0);
        assert!(sigmoid::<false>(-200.0) < 1e-37);
        assert_eq!(sigmoid::<false>(200.0), 1.0);
    }
}

//! Choosing from a next-token distribution: the top k, and sampling.
use rand::Rng;

/// The k most probable ids, most probable first (ties: lower id first).
pub fn top_k_of(probs: &[f32], k: usize) -> Vec<(u32, f64)> {
    let mut idx: Vec<u32> = (0..probs.len() as u32).collect();
    idx.sort_by(|&a, &b| {
        probs[b as usize]
            .total_cmp(&probs[a as usize])
            .then(a.cmp(&b))
    });
    idx.truncate(k);
    idx.into_iter()
        .map(|i| (i, probs[i as usize] as f64))
        .collect()
}

/// Samples an id from `probs` sharpened by `temperature` and restricted to
/// the `top_k` most probable ids (0 = all); temperature 0 is greedy.
pub fn sample(probs: &[f32], temperature: f32, top_k: usize, rng: &mut impl Rng) -> u32 {
    let k = if top_k == 0 {
        probs.len()
    } else {
        top_k.min(probs.len())
    };
    let candidates = top_k_of(probs, k);
    if temperature <= 0.0 {
        return candidates[0].0;
    }
    // p^(1/T), renormalised over the candidates (in log space for stability).
    let logs: Vec<f64> = candidates
        .iter()
        .map(|&(_, p)| p.max(1e-30).ln() / temperature as f64)
        .collect();
    let max = logs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logs.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (w, &(id, _)) in weights.iter().zip(&candidates) {
        if u < *w {
            return id;
        }
        u -= w;
    }
    candidates.last().expect("at least one candidate").0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sampling_respects_top_k_greedy_and_seed() {
        let probs = [0.1, 0.5, 0.3, 0.1];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        assert_eq!(sample(&probs, 0.0, 0, &mut rng), 1);
        for _ in 0..100 {
            let id = sample(&probs, 1.0, 2, &mut rng);
            assert!(id == 1 || id == 2);
        }
        let draw = |seed| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            (0..20)
                .map(|_| sample(&probs, 1.0, 0, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}

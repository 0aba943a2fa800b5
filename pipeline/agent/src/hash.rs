//! Rendezvous (highest random weight) hashing of a `source_id` over the configured dopplers.
//!
//! Every agent must send one app's envelopes to the same doppler, so consumers following one app
//! need only that doppler. The hash is therefore a fixed function (FNV-1a plus a 64-bit
//! finaliser), not the process-seeded std hasher, and it is keyed by the doppler's URL rather than
//! its position in the list, so agents whose configs list the dopplers in different orders still
//! agree. When a doppler is down a source moves to its next doppler in rank, and only the
//! sources of that doppler move.

/// FNV-1a over `bytes`, continuing from `state`.
fn fnv1a(mut state: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        state ^= u64::from(b);
        state = state.wrapping_mul(0x0100_0000_01b3);
    }
    state
}

/// The splitmix64 finaliser: FNV alone clusters on short keys that differ in the last byte.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The per-doppler seed of the weight function.
pub(crate) fn seed(doppler_url: &str) -> u64 {
    mix(fnv1a(FNV_OFFSET, doppler_url.as_bytes()))
}

fn weight(seed: u64, source_id: &str) -> u64 {
    mix(fnv1a(seed, source_id.as_bytes()))
}

/// The dopplers (indices into `seeds`) in the order `source_id` prefers them.
pub(crate) fn ranking(seeds: &[u64], source_id: &str) -> Box<[u16]> {
    let mut order: Vec<(u64, u16)> = seeds
        .iter()
        .enumerate()
        .map(|(i, &s)| (weight(s, source_id), u16::try_from(i).unwrap_or(u16::MAX)))
        .collect();
    // Highest weight first; the index breaks (astronomically unlikely) ties deterministically.
    order.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    order.into_iter().map(|(_, i)| i).collect()
}

/// The first doppler in `ranking` that is up, or the first choice when none is (its queue then
/// holds the data until it returns).
pub(crate) fn pick(ranking: &[u16], up: &[bool]) -> usize {
    ranking
        .iter()
        .map(|&i| usize::from(i))
        .find(|&i| up.get(i).copied().unwrap_or(false))
        .or_else(|| ranking.first().map(|&i| usize::from(i)))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds(urls: &[&str]) -> Vec<u64> {
        urls.iter().map(|u| seed(u)).collect()
    }

    #[test]
    fn the_hash_is_stable_across_processes() {
        // Pinned values: changing the function would split apps across dopplers during a
        // rolling upgrade of the agents.
        let s = seed("http://127.0.0.1:8082");
        assert_eq!(s, 0xedd6_2362_3b90_b4dc);
        assert_eq!(weight(s, "app"), 0x6c49_08f1_2726_18cf);
    }

    #[test]
    fn sources_spread_evenly_over_dopplers() {
        let s = seeds(&["http://d0:8082", "http://d1:8082", "http://d2:8082"]);
        let mut counts = [0usize; 3];
        for i in 0..30_000 {
            counts[usize::from(ranking(&s, &format!("app-{i}"))[0])] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn list_order_does_not_change_the_choice() {
        let a = ["http://d0:8082", "http://d1:8082", "http://d2:8082"];
        let b = ["http://d2:8082", "http://d0:8082", "http://d1:8082"];
        let (sa, sb) = (seeds(&a), seeds(&b));
        for i in 0..1000 {
            let src = format!("app-{i}");
            let first_a = a[usize::from(ranking(&sa, &src)[0])];
            let first_b = b[usize::from(ranking(&sb, &src)[0])];
            assert_eq!(first_a, first_b);
        }
    }

    #[test]
    fn losing_a_doppler_moves_only_its_sources() {
        let s = seeds(&["http://d0:8082", "http://d1:8082", "http://d2:8082"]);
        let all_up = [true, true, true];
        let d1_down = [true, false, true];
        for i in 0..3000 {
            let r = ranking(&s, &format!("app-{i}"));
            let before = pick(&r, &all_up);
            let after = pick(&r, &d1_down);
            if before == 1 {
                assert_ne!(after, 1);
                assert_eq!(after, usize::from(r[1]));
            } else {
                assert_eq!(before, after);
            }
        }
    }

    #[test]
    fn with_every_doppler_down_the_first_choice_keeps_the_data() {
        let s = seeds(&["http://d0:8082", "http://d1:8082"]);
        let r = ranking(&s, "app");
        assert_eq!(pick(&r, &[false, false]), usize::from(r[0]));
    }
}

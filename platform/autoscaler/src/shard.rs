//! Which autoscaler copy decides for which app: rendezvous (highest random weight) hashing of
//! the app's guid over `instance_count` copies.
//!
//! Sits between the policy poll and the engine: every copy polls every policy and keeps those
//! whose app it owns, and the feed keeps only those apps' envelopes.
//!
//! Invariant: [`owner`] is a pure function of the guid and the copy count: FNV-1a plus a fixed
//! mixer rather than std's per-process random hasher, so every copy, version and restart agrees
//! on it without talking to the others. Going from n to n + 1 copies moves only the apps the
//! new copy wins, about 1 / (n + 1) of them.

/// One copy's place among the autoscalers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This copy, `0..count`.
    pub index: u32,
    /// How many copies share the apps (at least 1).
    pub count: u32,
}

impl Shard {
    /// The only copy: owns every app.
    pub const ALONE: Self = Self { index: 0, count: 1 };

    /// Whether this copy decides for `app_guid`.
    #[must_use]
    pub fn owns(&self, app_guid: &str) -> bool {
        self.count <= 1 || owner(app_guid, self.count) == self.index
    }
}

/// The copy (`0..count`) that owns `app_guid`.
#[must_use]
pub fn owner(app_guid: &str, count: u32) -> u32 {
    let mut best = (0, weight(app_guid, 0));
    for index in 1..count {
        let w = weight(app_guid, index);
        if w > best.1 {
            best = (index, w);
        }
    }
    best.0
}

/// The pseudo-random weight of (`app_guid`, `index`).
fn weight(app_guid: &str, index: u32) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0100_0000_01b3;
    let mut h = FNV_OFFSET;
    for b in app_guid.bytes().chain(index.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    // FNV's low bits move little when only the last bytes (the index) change: finish with
    // splitmix64's mixer so every copy's weight is independent.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guids(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("{i:08x}-5f2e-4c1a-9b7d-{:012x}", i * 7919))
            .collect()
    }

    #[test]
    fn every_app_has_exactly_one_owner_and_the_split_is_even() {
        let apps = guids(3000);
        for count in [1, 2, 3, 5] {
            let mut per_copy = vec![0usize; count as usize];
            for app in &apps {
                let owners: Vec<u32> = (0..count)
                    .filter(|&index| Shard { index, count }.owns(app))
                    .collect();
                assert_eq!(owners.len(), 1, "{app} with {count} copies: {owners:?}");
                per_copy[owners[0] as usize] += 1;
            }
            let fair = apps.len() / count as usize;
            for n in &per_copy {
                assert!(
                    n.abs_diff(fair) < fair / 10 + 30,
                    "{count} copies: {per_copy:?}"
                );
            }
        }
    }

    #[test]
    fn adding_a_copy_moves_only_what_the_new_copy_takes() {
        let apps = guids(3000);
        let mut moved = 0;
        for app in &apps {
            let before = owner(app, 3);
            let after = owner(app, 4);
            if before != after {
                assert_eq!(after, 3, "{app} moved between old copies");
                moved += 1;
            }
        }
        assert!((600..900).contains(&moved), "{moved} of 3000 moved");
    }

    #[test]
    fn ownership_is_fixed_across_processes_and_versions() {
        // Copies compare nothing at run time, so these values are the contract: a change
        // here would make copies of two versions disagree during a rolling upgrade.
        assert_eq!(owner("2a5d1c3e-7f00-4b6a-8e59-0c1d2e3f4a5b", 2), 1);
        assert_eq!(owner("demo", 3), 1);
        assert_eq!(owner("anything", 1), 0);
        assert!(Shard::ALONE.owns("anything"));
    }
}

//! The auction: which cell an instance goes to, scored as Diego's auctioneer scores an LRP.
//!
//! Flow: placement builds one [`Candidate`] per known cell (its presence: zone, capacity, free
//! memory, disk and slots, starting instances; its heartbeat and the placements in flight: how
//! many instances of this app it holds) → [`rank`] → the cells to ask, best first, and why each
//! other cell was left out (the `InsufficientResources` text users see).
//!
//! The order: cells that are evacuating are left out; then the hard fit (memory, disk, one
//! free container slot); then fewest instances of this app on the cell (Diego's 1000-point
//! locality penalty, put first so that no zone preference can ever put two instances of one app
//! on a cell while another cell has room); then the zone holding the fewest instances of the
//! app; then the score, lowest first: the mean used fraction of memory, disk and slots after
//! placing the instance, plus 0.25 per starting instance; then the id, so the result is
//! deterministic.
//!
//! Invariant: [`rank`] is pure and total: any input gives an answer, nothing panics on odd
//! capacities (zero totals count as full).

use std::collections::BTreeMap;

/// Diego's `starting_container_weight`.
pub(crate) const STARTING_WEIGHT: f64 = 0.25;
/// Diego's `LocalityOffset`: the score of each instance of the same app already on the cell.
pub(crate) const LOCALITY_OFFSET: f64 = 1000.0;

/// One cell as the auction sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidate {
    pub(crate) id: String,
    pub(crate) zone: String,
    pub(crate) evacuating: bool,
    pub(crate) total_memory_mb: u64,
    pub(crate) total_disk_mb: u64,
    pub(crate) total_containers: u32,
    pub(crate) free_memory_mb: u64,
    pub(crate) free_disk_mb: u64,
    pub(crate) free_containers: u32,
    /// Instances still starting (Diego's `StartingContainerCount`).
    pub(crate) starting: u32,
    /// Instances of the app being placed already on the cell (or on their way).
    pub(crate) app_instances: u32,
}

/// What the instance needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Need {
    pub(crate) memory_mb: u64,
    pub(crate) disk_mb: u64,
}

/// The auction's answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Ranking {
    /// Cells to ask, best first.
    pub(crate) order: Vec<String>,
    /// `(cell, why it cannot take the instance)` for every other cell.
    pub(crate) refusals: Vec<(String, String)>,
}

impl Ranking {
    /// Diego's `InsufficientResourcesError`, naming each cell's reason.
    pub(crate) fn insufficient(&self, need: Need) -> String {
        if self.refusals.is_empty() {
            return format!(
                "insufficient resources: no executor has room for an instance of {} MB (no cell \
                 is known); it will be placed when a cell advertises",
                need.memory_mb
            );
        }
        let reasons: Vec<String> = self
            .refusals
            .iter()
            .map(|(cell, why)| format!("{cell}: {why}"))
            .collect();
        format!("insufficient resources: {}", reasons.join("; "))
    }
}

fn fraction_used(free: f64, total: f64) -> f64 {
    if total <= 0.0 {
        1.0
    } else {
        (1.0 - free / total).clamp(0.0, 1.0)
    }
}

/// Diego's score of placing `need` on `c` (lower wins), locality included.
pub(crate) fn score(c: &Candidate, need: Need) -> f64 {
    let memory = fraction_used(
        c.free_memory_mb.saturating_sub(need.memory_mb) as f64,
        c.total_memory_mb as f64,
    );
    let disk = fraction_used(
        c.free_disk_mb.saturating_sub(need.disk_mb) as f64,
        c.total_disk_mb as f64,
    );
    let containers = fraction_used(
        f64::from(c.free_containers.saturating_sub(1)),
        f64::from(c.total_containers),
    );
    (memory + disk + containers) / 3.0
        + f64::from(c.starting) * STARTING_WEIGHT
        + f64::from(c.app_instances) * LOCALITY_OFFSET
}

/// Why `c` cannot take `need`, if it cannot.
fn problem(c: &Candidate, need: Need) -> Option<String> {
    if c.evacuating {
        return Some("evacuating (takes no new work)".to_owned());
    }
    let mut problems = Vec::new();
    if c.free_memory_mb < need.memory_mb {
        problems.push(format!(
            "memory ({} of {} MB free, {} needed)",
            c.free_memory_mb, c.total_memory_mb, need.memory_mb
        ));
    }
    if c.free_disk_mb < need.disk_mb {
        problems.push(format!(
            "disk ({} of {} MB free, {} needed)",
            c.free_disk_mb, c.total_disk_mb, need.disk_mb
        ));
    }
    if c.free_containers == 0 {
        problems.push(format!(
            "containers (all {} slots in use)",
            c.total_containers
        ));
    }
    (!problems.is_empty()).then(|| format!("insufficient {}", problems.join(", ")))
}

/// Ranks `cells` for an instance needing `need`; see the module docs for the order.
pub(crate) fn rank(cells: &[Candidate], need: Need) -> Ranking {
    let mut zone_counts: BTreeMap<&str, u64> = BTreeMap::new();
    for c in cells.iter().filter(|c| !c.evacuating) {
        *zone_counts.entry(c.zone.as_str()).or_insert(0) += u64::from(c.app_instances);
    }
    let mut fits = Vec::new();
    let mut refusals = Vec::new();
    for c in cells {
        match problem(c, need) {
            Some(why) => refusals.push((c.id.clone(), why)),
            None => fits.push(c),
        }
    }
    fits.sort_by(|a, b| {
        let zone = |c: &Candidate| zone_counts.get(c.zone.as_str()).copied().unwrap_or(0);
        a.app_instances
            .cmp(&b.app_instances)
            .then(zone(a).cmp(&zone(b)))
            .then(score(a, need).total_cmp(&score(b, need)))
            .then(a.id.cmp(&b.id))
    });
    refusals.sort();
    Ranking {
        order: fits.into_iter().map(|c| c.id.clone()).collect(),
        refusals,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cell(id: &str, zone: &str) -> Candidate {
        Candidate {
            id: id.to_owned(),
            zone: zone.to_owned(),
            evacuating: false,
            total_memory_mb: 4096,
            total_disk_mb: 8192,
            total_containers: 10,
            free_memory_mb: 4096,
            free_disk_mb: 8192,
            free_containers: 10,
            starting: 0,
            app_instances: 0,
        }
    }

    const NEED: Need = Need {
        memory_mb: 256,
        disk_mb: 1024,
    };

    #[test]
    fn the_scorer_picks_as_diego_would() {
        struct Case {
            name: &'static str,
            cells: Vec<Candidate>,
            want: Vec<&'static str>,
        }
        let busy = |mut c: Candidate, mb: u64| {
            c.free_memory_mb -= mb;
            c
        };
        let with = |mut c: Candidate, app: u32| {
            c.app_instances = app;
            c
        };
        let starting = |mut c: Candidate, n: u32| {
            c.starting = n;
            c
        };
        let evacuating = |mut c: Candidate| {
            c.evacuating = true;
            c
        };
        let cases = vec![
            Case {
                name: "least used wins",
                cells: vec![busy(cell("a", "z1"), 2048), cell("b", "z1")],
                want: vec!["b", "a"],
            },
            Case {
                name: "a cell already holding the app loses to any other with room",
                cells: vec![with(cell("a", "z1"), 1), busy(cell("b", "z1"), 3000)],
                want: vec!["b", "a"],
            },
            Case {
                name: "the zone with fewest instances of the app first",
                cells: vec![
                    cell("a", "z1"),
                    with(cell("b", "z1"), 1),
                    busy(cell("c", "z2"), 3000),
                ],
                want: vec!["c", "a", "b"],
            },
            Case {
                name: "starting instances weigh 0.25 each",
                cells: vec![starting(cell("a", "z1"), 2), busy(cell("b", "z1"), 1024)],
                want: vec!["b", "a"],
            },
            Case {
                name: "evacuating cells are left out",
                cells: vec![evacuating(cell("a", "z1")), busy(cell("b", "z1"), 3000)],
                want: vec!["b"],
            },
            Case {
                name: "ties break by id",
                cells: vec![cell("b", "z1"), cell("a", "z1")],
                want: vec!["a", "b"],
            },
        ];
        for case in cases {
            let got = rank(&case.cells, NEED);
            assert_eq!(got.order, case.want, "{}", case.name);
        }
    }

    #[test]
    fn insufficient_resources_names_each_cells_reason() {
        let mut full = cell("a", "z1");
        full.free_memory_mb = 100;
        full.free_containers = 0;
        let mut small_disk = cell("b", "z2");
        small_disk.free_disk_mb = 10;
        let mut leaving = cell("c", "z3");
        leaving.evacuating = true;
        let r = rank(&[full, small_disk, leaving], NEED);
        assert!(r.order.is_empty());
        let text = r.insufficient(NEED);
        assert!(
            text.contains("a: insufficient memory (100 of 4096 MB free, 256 needed), containers"),
            "{text}"
        );
        assert!(
            text.contains("b: insufficient disk (10 of 8192 MB free"),
            "{text}"
        );
        assert!(text.contains("c: evacuating"), "{text}");
        assert!(
            Ranking::default()
                .insufficient(NEED)
                .contains("no executor has room")
        );
        // Zero totals count as full rather than dividing by zero.
        let mut odd = cell("d", "z1");
        odd.total_memory_mb = 0;
        odd.total_disk_mb = 0;
        odd.total_containers = 0;
        assert!(score(&odd, NEED).is_finite());
    }

    #[test]
    fn six_instances_on_three_cells_spread_two_two_two() {
        let mut cells = vec![cell("c1", "z1"), cell("c2", "z2"), cell("c3", "z3")];
        for _ in 0..6 {
            let winner = rank(&cells, NEED).order[0].clone();
            let c = cells.iter_mut().find(|c| c.id == winner).unwrap();
            c.app_instances += 1;
            c.free_memory_mb -= NEED.memory_mb;
            c.free_disk_mb -= NEED.disk_mb;
            c.free_containers -= 1;
        }
        let counts: Vec<u32> = cells.iter().map(|c| c.app_instances).collect();
        assert_eq!(counts, [2, 2, 2]);
    }

    fn arb_cell() -> impl Strategy<Value = Candidate> {
        (
            0..3u8,
            any::<bool>(),
            (0..4096u64, 0..8192u64, 0..4u32),
            (0..4u32, 0..3u32),
        )
            .prop_map(|(zone, evacuating, (mem, disk, slots), (starting, app))| {
                let mut c = cell("", &format!("z{zone}"));
                c.evacuating = evacuating;
                c.free_memory_mb = mem;
                c.free_disk_mb = disk;
                c.free_containers = slots;
                c.starting = starting;
                c.app_instances = app;
                c
            })
    }

    proptest! {
        #[test]
        fn never_co_locates_while_another_cell_has_room(
            cells in proptest::collection::vec(arb_cell(), 0..8).prop_map(|mut cells| {
                for (i, c) in cells.iter_mut().enumerate() {
                    c.id = format!("c{i}");
                }
                cells
            }),
            memory in 1..2048u64,
            disk in 1..4096u64,
        ) {
            let need = Need { memory_mb: memory, disk_mb: disk };
            let r = rank(&cells, need);
            let fits = |c: &Candidate| !c.evacuating
                && c.free_memory_mb >= memory && c.free_disk_mb >= disk && c.free_containers > 0;
            prop_assert_eq!(r.order.len() + r.refusals.len(), cells.len());
            if let Some(winner) = r.order.first() {
                let w = cells.iter().find(|c| &c.id == winner).unwrap();
                prop_assert!(fits(w));
                let fewest = cells.iter().filter(|c| fits(c)).map(|c| c.app_instances).min();
                prop_assert_eq!(Some(w.app_instances), fewest);
            } else {
                prop_assert!(!cells.iter().any(fits));
            }
            for id in &r.order {
                prop_assert!(cells.iter().any(|c| &c.id == id && fits(c)));
            }
        }
    }
}

//! The static memory plan: every intermediate buffer gets an offset in one arena, and
//! buffers whose lifetimes do not overlap share memory (first fit by liveness, as register
//! allocators and tract's and TVM's memory planners do it).
//!
//! The batch is a run-time value, so sizes are affine in it. A buffer's size is either
//! `per_sample · batch` (values with the batch axis) or `fixed` bytes (per-kernel
//! workspaces, values without a batch axis). The arena is laid out as a fixed region
//! followed by a batch-scaled region; offsets in the scaled region are planned in
//! per-sample units, and a plan that is valid for one sample is valid for any batch,
//! since every offset and size scales by the same factor.

/// Alignment of every buffer (a cache line; also enough for any vector access).
pub const ALIGN: usize = 64;

/// A buffer to place: its size and the steps during which it is live (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Bytes per sample (scaled by the batch); 0 for a fixed buffer.
    pub per_sample: usize,
    /// Bytes independent of the batch (used when `per_sample` is 0).
    pub fixed: usize,
    /// Step that writes it first.
    pub first: usize,
    /// Step that reads it last.
    pub last: usize,
}

/// Where a buffer lives: `offset = fixed + per_sample · batch` bytes into the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Offset {
    /// Bytes scaled by the batch.
    pub per_sample: usize,
    /// Constant bytes.
    pub fixed: usize,
}

/// The plan: an offset per buffer and the arena's size.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Plan {
    /// Offsets, in the order the buffers were given.
    pub offsets: Vec<Offset>,
    /// Arena size: `fixed + per_sample · batch` bytes.
    pub size: Offset,
}

impl Plan {
    /// Arena bytes for `batch` samples.
    pub fn bytes(&self, batch: usize) -> Option<usize> {
        self.size
            .per_sample
            .checked_mul(batch)?
            .checked_add(self.size.fixed)
    }
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Places `buffers`: first fit, largest first, among buffers whose lifetimes overlap.
pub fn plan(buffers: &[Buffer]) -> Plan {
    let fixed_region = place(buffers, |b| if b.per_sample == 0 { b.fixed } else { 0 });
    let scaled_region = place(buffers, |b| b.per_sample);
    let fixed_size = fixed_region.1;
    let offsets = buffers
        .iter()
        .zip(fixed_region.0.iter().zip(&scaled_region.0))
        .map(|(b, (&f, &s))| {
            if b.per_sample == 0 {
                Offset {
                    per_sample: 0,
                    fixed: f,
                }
            } else {
                Offset {
                    per_sample: s,
                    fixed: fixed_size,
                }
            }
        })
        .collect();
    Plan {
        offsets,
        size: Offset {
            per_sample: scaled_region.1,
            fixed: fixed_size,
        },
    }
}

/// First-fit placement of the buffers with a non-zero `size(b)`; returns offsets (0 for
/// the others) and the region's size. The buffers already placed whose lifetimes overlap
/// the next one are found through [`Placed`] in time proportional to their number (a scan
/// of every placed buffer made planning quadratic: minutes at 100,000 nodes).
fn place(buffers: &[Buffer], size: impl Fn(&Buffer) -> usize) -> (Vec<usize>, usize) {
    let mut order: Vec<usize> = (0..buffers.len())
        .filter(|&i| size(&buffers[i]) > 0)
        .collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(size(&buffers[i])), buffers[i].first, i));
    let mut offsets = vec![0; buffers.len()];
    let steps = buffers
        .iter()
        .map(|b| b.first.max(b.last) + 1)
        .max()
        .unwrap_or(1);
    let mut placed = Placed::new(steps);
    let mut total = 0;
    let mut busy: Vec<(usize, usize)> = Vec::new();
    for i in order {
        let b = &buffers[i];
        let len = align(size(b));
        busy.clear();
        placed.overlapping(b.first, b.last, &mut |span| busy.push(span));
        busy.sort_unstable();
        let mut at = 0;
        for &(s, e) in &busy {
            if at + len <= s {
                break;
            }
            at = at.max(e);
        }
        offsets[i] = at;
        placed.insert(b.first, b.last, (at, at + len));
        total = total.max(at + len);
    }
    (offsets, total)
}

/// Placed buffers by lifetime, for "which placed buffers are live at some step of
/// `first..=last`": a segment tree over the first step, each node holding the latest last
/// step below it, so that a query visits only subtrees that hold an overlapping buffer.
struct Placed {
    /// Leaves (one per step): the (last step, memory span) of the buffers placed with that
    /// first step.
    leaves: Vec<Vec<(usize, (usize, usize))>>,
    /// Latest last step in each node's subtree, `None` when it holds no buffer; node 1 is
    /// the root, node `n`'s children are `2n` and `2n + 1`, leaf `t` is node `width + t`.
    latest: Vec<Option<usize>>,
    width: usize,
}

impl Placed {
    fn new(steps: usize) -> Placed {
        let width = steps.next_power_of_two();
        Placed {
            leaves: vec![Vec::new(); width],
            latest: vec![None; 2 * width],
            width,
        }
    }

    fn insert(&mut self, first: usize, last: usize, span: (usize, usize)) {
        self.leaves[first].push((last, span));
        let mut node = self.width + first;
        while node > 0 {
            self.latest[node] = Some(self.latest[node].map_or(last, |l| l.max(last)));
            node /= 2;
        }
    }

    /// Calls `found` with the memory span of every placed buffer live during `first..=last`
    /// (its first step at most `last`, its last step at least `first`).
    fn overlapping(&self, first: usize, last: usize, found: &mut impl FnMut((usize, usize))) {
        // (node, the first step it covers, steps it covers)
        let mut stack = vec![(1usize, 0usize, self.width)];
        while let Some((node, start, len)) = stack.pop() {
            if start > last || self.latest[node].is_none_or(|l| l < first) {
                continue;
            }
            if len == 1 {
                for &(l, span) in &self.leaves[start] {
                    if l >= first {
                        found(span);
                    }
                }
                continue;
            }
            let half = len / 2;
            stack.push((2 * node, start, half));
            stack.push((2 * node + 1, start + half, half));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaled(per_sample: usize, first: usize, last: usize) -> Buffer {
        Buffer {
            per_sample,
            fixed: 0,
            first,
            last,
        }
    }

    #[test]
    fn disjoint_lifetimes_share_memory() {
        let p = plan(&[scaled(100, 0, 1), scaled(100, 1, 2), scaled(100, 2, 3)]);
        // 0 and 2 do not overlap: they share; 1 overlaps both.
        assert_eq!(p.offsets[0].per_sample, p.offsets[2].per_sample);
        assert_ne!(p.offsets[0].per_sample, p.offsets[1].per_sample);
        assert_eq!(p.size.per_sample, 256);
    }

    #[test]
    fn fixed_buffers_come_first() {
        let p = plan(&[
            scaled(10, 0, 0),
            Buffer {
                per_sample: 0,
                fixed: 100,
                first: 0,
                last: 0,
            },
        ]);
        assert_eq!(
            p.offsets[1],
            Offset {
                per_sample: 0,
                fixed: 0
            }
        );
        assert_eq!(
            p.offsets[0],
            Offset {
                per_sample: 0,
                fixed: 128
            }
        );
        assert_eq!(p.bytes(3), Some(128 + 64 * 3));
    }

    /// The placement of the first version, a scan of every placed buffer per buffer.
    fn place_by_scanning(
        buffers: &[Buffer],
        size: impl Fn(&Buffer) -> usize,
    ) -> (Vec<usize>, usize) {
        let mut order: Vec<usize> = (0..buffers.len())
            .filter(|&i| size(&buffers[i]) > 0)
            .collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(size(&buffers[i])), buffers[i].first, i));
        let mut offsets = vec![0; buffers.len()];
        let mut placed: Vec<(usize, usize, usize)> = Vec::new();
        let mut total = 0;
        for i in order {
            let b = &buffers[i];
            let len = align(size(b));
            let mut busy: Vec<(usize, usize)> = placed
                .iter()
                .filter(|(j, _, _)| buffers[*j].first <= b.last && b.first <= buffers[*j].last)
                .map(|&(_, s, e)| (s, e))
                .collect();
            busy.sort();
            let mut at = 0;
            for (s, e) in busy {
                if at + len <= s {
                    break;
                }
                at = at.max(e);
            }
            offsets[i] = at;
            placed.push((i, at, at + len));
            total = total.max(at + len);
        }
        (offsets, total)
    }

    #[test]
    fn the_interval_search_places_exactly_as_a_full_scan() {
        let mut seed = 11u64;
        let mut next = |m: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        for round in 0..20 {
            let n = 1 + next(300) as usize;
            let buffers: Vec<Buffer> = (0..n)
                .map(|_| {
                    let first = next(100) as usize;
                    // Mostly short lifetimes, some spanning most of the program.
                    let span = if next(10) == 0 { next(100) } else { next(4) } as usize;
                    scaled(1 + next(1000) as usize, first, first + span)
                })
                .collect();
            assert_eq!(
                place(&buffers, |b| b.per_sample),
                place_by_scanning(&buffers, |b| b.per_sample),
                "round {round}"
            );
        }
    }

    #[test]
    fn a_long_chain_plans_in_linear_time() {
        // 200,000 buffers each live for two steps: the scan took minutes.
        let buffers: Vec<Buffer> = (0..200_000).map(|i| scaled(16 + i % 7, i, i + 1)).collect();
        let start = std::time::Instant::now();
        let p = plan(&buffers);
        assert!(p.size.per_sample <= 3 * 64, "{:?}", p.size);
        assert!(start.elapsed().as_secs() < 20, "{:?}", start.elapsed());
    }

    #[test]
    fn overlapping_buffers_never_overlap_in_memory() {
        // A pseudo-random set of buffers; check the invariant pairwise.
        let mut seed = 7u64;
        let mut next = |m: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        let buffers: Vec<Buffer> = (0..60)
            .map(|_| {
                let first = next(20) as usize;
                scaled(1 + next(500) as usize, first, first + next(5) as usize)
            })
            .collect();
        let p = plan(&buffers);
        for (i, a) in buffers.iter().enumerate() {
            for (j, b) in buffers.iter().enumerate().skip(i + 1) {
                if a.first <= b.last && b.first <= a.last {
                    let (sa, sb) = (p.offsets[i].per_sample, p.offsets[j].per_sample);
                    assert!(
                        sa + a.per_sample <= sb || sb + b.per_sample <= sa,
                        "{i} and {j} overlap"
                    );
                }
            }
            assert!(p.offsets[i].per_sample + a.per_sample <= p.size.per_sample);
        }
    }
}

//! A layered ("Sugiyama") layout of a DAG, top to bottom, in linear time per sweep so that
//! a 10,000-node graph lays out in well under a second: longest-path layers, dummy nodes
//! on edges that skip layers (so residual and mask edges get their own lane instead of
//! crossing nodes), barycenter ordering sweeps, then coordinates that center each node
//! under its neighbours without overlaps (clusters of overlapping nodes are placed at the
//! mean of what their members want, as isotonic regression does).
//!
//! Graphviz's `dot` does this better on small graphs, but it is not always installed and
//! takes minutes on the largest ones; a layout crate of comparable quality was not worth a
//! dependency for a report. Networks are mostly chains with short branches, which this
//! lays out cleanly.

/// Vertical gap between layers, in pixels (room for the edges to bend).
const LAYER_GAP: f64 = 34.0;
/// Horizontal gap between neighbours in a layer.
const NODE_GAP: f64 = 16.0;
/// Width of the lane of an edge through a layer it skips.
const DUMMY_WIDTH: f64 = 6.0;
/// Most dummy nodes in all: past it, the longest edges are drawn straight (over whatever
/// lies between) so that a pathological graph cannot blow up the layout's size.
const MAX_DUMMIES: usize = 200_000;
/// Ordering sweeps (each one down and one up).
const SWEEPS: usize = 4;
/// Coordinate refinement rounds (each one down and one up).
const ROUNDS: usize = 4;

/// Where everything goes: node boxes by their top-left corner, and each edge as a list of
/// points from the source's bottom to the target's top.
#[derive(Debug)]
pub(crate) struct Layout {
    /// Top-left corner of each node, in input order.
    pub(crate) nodes: Vec<(f64, f64)>,
    /// The points of each edge, in input order.
    pub(crate) edges: Vec<Vec<(f64, f64)>>,
    /// The layer of each node (its depth from the sources).
    pub(crate) layer: Vec<usize>,
    /// Width of the drawing.
    pub(crate) width: f64,
    /// Height of the drawing.
    pub(crate) height: f64,
}

/// Lays out nodes of the given `(width, height)` with `edges` from source to target, which
/// must form a DAG (an edge that would close a cycle is ignored for the layering). `margin`
/// is left free around the drawing.
pub(crate) fn layout(sizes: &[(f64, f64)], edges: &[(usize, usize)], margin: f64) -> Layout {
    let n = sizes.len();
    let layer = layers(n, edges);
    // Items: the nodes, then one dummy per skipped layer of each long edge.
    let mut item_layer = layer.clone();
    let mut widths: Vec<f64> = sizes.iter().map(|s| s.0).collect();
    let mut chains: Vec<Vec<usize>> = Vec::with_capacity(edges.len());
    let mut dummies = 0;
    for &(u, v) in edges {
        let mut chain = vec![u];
        if layer[v] > layer[u] + 1 && dummies + layer[v] - layer[u] - 1 <= MAX_DUMMIES {
            for l in layer[u] + 1..layer[v] {
                item_layer.push(l);
                widths.push(DUMMY_WIDTH);
                chain.push(item_layer.len() - 1);
                dummies += 1;
            }
        }
        chain.push(v);
        chains.push(chain);
    }
    let items = item_layer.len();
    let mut up: Vec<Vec<usize>> = vec![Vec::new(); items];
    let mut down: Vec<Vec<usize>> = vec![Vec::new(); items];
    for chain in &chains {
        for pair in chain.windows(2) {
            if item_layer[pair[1]] > item_layer[pair[0]] {
                down[pair[0]].push(pair[1]);
                up[pair[1]].push(pair[0]);
            }
        }
    }
    let depth = item_layer.iter().copied().max().map_or(0, |d| d + 1);
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); depth];
    for (i, &l) in item_layer.iter().enumerate() {
        rows[l].push(i);
    }
    order(&mut rows, &up, &down);
    let x = coordinates(&rows, &widths, &up, &down);
    // Rows: each as tall as its tallest node.
    let mut top = vec![margin; depth + 1];
    for (l, row) in rows.iter().enumerate() {
        let h = row
            .iter()
            .filter(|&&i| i < n)
            .map(|&i| sizes[i].1)
            .fold(0.0, f64::max);
        top[l + 1] = top[l] + h + LAYER_GAP;
    }
    let min_x = x
        .iter()
        .zip(&widths)
        .map(|(x, w)| x - w / 2.0)
        .fold(f64::INFINITY, f64::min);
    let shift = if min_x.is_finite() {
        margin - min_x
    } else {
        margin
    };
    let nodes: Vec<(f64, f64)> = (0..n)
        .map(|i| (x[i] - sizes[i].0 / 2.0 + shift, top[layer[i]]))
        .collect();
    let edges = chains
        .iter()
        .map(|chain| {
            let (u, v) = (chain[0], chain[chain.len() - 1]);
            let mut points = vec![(x[u] + shift, top[layer[u]] + sizes[u].1)];
            for &d in &chain[1..chain.len() - 1] {
                let mid = top[item_layer[d]]
                    + (top[item_layer[d] + 1] - LAYER_GAP - top[item_layer[d]]) / 2.0;
                points.push((x[d] + shift, mid));
            }
            points.push((x[v] + shift, top[layer[v]]));
            points
        })
        .collect();
    let width = x
        .iter()
        .zip(&widths)
        .map(|(x, w)| x + w / 2.0 + shift)
        .fold(0.0, f64::max)
        + margin;
    Layout {
        nodes,
        edges,
        layer,
        width,
        height: top[depth] - LAYER_GAP + margin,
    }
}

/// Longest-path layers from the sources (Kahn's order); a source used only further down
/// (a mask input, a model input read by one late node) moves down to just above its first
/// user, so that its edges stay short.
fn layers(n: usize, edges: &[(usize, usize)]) -> Vec<usize> {
    let mut indegree = vec![0usize; n];
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(u, v) in edges {
        succ[u].push(v);
        indegree[v] += 1;
    }
    let mut layer = vec![0usize; n];
    let mut queue: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let sources = queue.clone();
    let mut head = 0;
    while head < queue.len() {
        let u = queue[head];
        head += 1;
        for &v in &succ[u] {
            layer[v] = layer[v].max(layer[u] + 1);
            indegree[v] -= 1;
            if indegree[v] == 0 {
                queue.push(v);
            }
        }
    }
    for s in sources {
        if let Some(first) = succ[s].iter().map(|&v| layer[v]).min() {
            layer[s] = first.saturating_sub(1);
        }
    }
    layer
}

/// Orders each row by the barycenters of its neighbours in the row above (down sweeps) or
/// below (up sweeps), which removes most crossings of a network's branches.
fn order(rows: &mut [Vec<usize>], up: &[Vec<usize>], down: &[Vec<usize>]) {
    let items = up.len();
    let mut pos = vec![0f64; items];
    let place = |rows: &[Vec<usize>], pos: &mut [f64]| {
        for row in rows {
            for (i, &item) in row.iter().enumerate() {
                pos[item] = i as f64;
            }
        }
    };
    place(rows, &mut pos);
    let sort_row = |row: &mut Vec<usize>, pos: &[f64], neighbours: &[Vec<usize>]| {
        let key: Vec<(f64, usize)> = row
            .iter()
            .map(|&i| {
                let ns = &neighbours[i];
                let b = if ns.is_empty() {
                    pos[i]
                } else {
                    ns.iter().map(|&j| pos[j]).sum::<f64>() / ns.len() as f64
                };
                (b, i)
            })
            .collect();
        let mut key = key;
        key.sort_by(|a, b| a.0.total_cmp(&b.0).then(pos[a.1].total_cmp(&pos[b.1])));
        *row = key.into_iter().map(|(_, i)| i).collect();
    };
    for _ in 0..SWEEPS {
        for l in 1..rows.len() {
            sort_row(&mut rows[l], &pos, up);
            for (i, &item) in rows[l].iter().enumerate() {
                pos[item] = i as f64;
            }
        }
        for l in (0..rows.len().saturating_sub(1)).rev() {
            sort_row(&mut rows[l], &pos, down);
            for (i, &item) in rows[l].iter().enumerate() {
                pos[item] = i as f64;
            }
        }
    }
}

/// Horizontal centers: each row packed left to right, then rounds that move every item to
/// the mean of its neighbours' centers (above on the way down, below on the way up) while
/// keeping the row's order and gaps.
fn coordinates(
    rows: &[Vec<usize>],
    widths: &[f64],
    up: &[Vec<usize>],
    down: &[Vec<usize>],
) -> Vec<f64> {
    let mut x = vec![0f64; widths.len()];
    for row in rows {
        let mut at = 0.0;
        for &i in row {
            x[i] = at + widths[i] / 2.0;
            at += widths[i] + NODE_GAP;
        }
    }
    for _ in 0..ROUNDS {
        for row in rows.iter().skip(1) {
            settle(row, widths, &mut x, up);
        }
        for row in rows.iter().rev().skip(1) {
            settle(row, widths, &mut x, down);
        }
    }
    x
}

/// Places one row: every item wants the mean center of its `neighbours` (or stays), and
/// items that would overlap merge into blocks placed at the mean of what their members want.
fn settle(row: &[usize], widths: &[f64], x: &mut [f64], neighbours: &[Vec<usize>]) {
    // A block: first item index in `row`, item count, the sum over its members of the left
    // edge each wants for the block (its own wanted left edge less its offset in the block),
    // and the block's left edge (the mean of those).
    struct Block {
        first: usize,
        len: usize,
        sum: f64,
        left: f64,
    }
    let mut blocks: Vec<Block> = Vec::with_capacity(row.len());
    for (k, &i) in row.iter().enumerate() {
        let ns = &neighbours[i];
        let want = if ns.is_empty() {
            x[i]
        } else {
            ns.iter().map(|&j| x[j]).sum::<f64>() / ns.len() as f64
        };
        // The item's left edge if it sat where it wants.
        let mut block = Block {
            first: k,
            len: 1,
            sum: want - widths[i] / 2.0,
            left: want - widths[i] / 2.0,
        };
        while let Some(prev) = blocks.pop() {
            let prev_width: f64 = row[prev.first..prev.first + prev.len]
                .iter()
                .map(|&j| widths[j] + NODE_GAP)
                .sum();
            if prev.left + prev_width <= block.left {
                blocks.push(prev);
                break;
            }
            // Merge: the members keep their offsets from the block's left edge.
            let sum = prev.sum + block.sum - block.len as f64 * prev_width;
            let len = prev.len + block.len;
            block = Block {
                first: prev.first,
                len,
                sum,
                left: sum / len as f64,
            };
        }
        blocks.push(block);
    }
    for b in &blocks {
        let mut at = b.left;
        for &i in &row[b.first..b.first + b.len] {
            x[i] = at + widths[i] / 2.0;
            at += widths[i] + NODE_GAP;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No two boxes of a layout overlap.
    fn assert_disjoint(l: &Layout, sizes: &[(f64, f64)]) {
        for i in 0..sizes.len() {
            for j in i + 1..sizes.len() {
                let (a, b) = (l.nodes[i], l.nodes[j]);
                let apart = a.0 + sizes[i].0 <= b.0 + 1e-6
                    || b.0 + sizes[j].0 <= a.0 + 1e-6
                    || a.1 + sizes[i].1 <= b.1
                    || b.1 + sizes[j].1 <= a.1;
                assert!(apart, "nodes {i} {a:?} and {j} {b:?} overlap");
            }
        }
    }

    #[test]
    fn a_residual_block_goes_top_to_bottom_without_overlaps() {
        // input -> conv -> relu -> conv2 -> add(+input) -> out, with a skip edge.
        let sizes = vec![
            (80.0, 30.0),
            (120.0, 30.0),
            (60.0, 30.0),
            (120.0, 30.0),
            (60.0, 30.0),
            (90.0, 30.0),
        ];
        let edges = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 4), (4, 5)];
        let l = layout(&sizes, &edges, 10.0);
        assert_eq!(l.layer, vec![0, 1, 2, 3, 4, 5]);
        for &(u, v) in &edges {
            assert!(
                l.nodes[u].1 + sizes[u].1 < l.nodes[v].1,
                "edge {u}->{v} points up"
            );
        }
        assert_disjoint(&l, &sizes);
        // The skip edge passes through its own lane: 3 dummy points between its ends.
        assert_eq!(l.edges[4].len(), 5);
        let lane = l.edges[4][2].0;
        for i in 1..4 {
            assert!(
                lane < l.nodes[i].0 || lane > l.nodes[i].0 + sizes[i].0,
                "the skip edge crosses node {i}"
            );
        }
        assert!(l.width > 0.0 && l.height > 6.0 * 30.0);
    }

    #[test]
    fn branches_sit_side_by_side_and_a_late_input_moves_down() {
        // 0 -> {1, 2} -> 3; input 4 is read by 3 only.
        let sizes = vec![(50.0, 20.0); 5];
        let edges = [(0, 1), (0, 2), (1, 3), (2, 3), (4, 3)];
        let l = layout(&sizes, &edges, 0.0);
        assert_eq!(l.layer, vec![0, 1, 1, 2, 1]);
        assert_disjoint(&l, &sizes);
        assert_eq!(l.nodes[1].1, l.nodes[2].1);
    }

    #[test]
    fn ten_thousand_nodes_lay_out_quickly() {
        // A chain of residual blocks with a side input every 100 nodes.
        let n = 10_000;
        let sizes = vec![(100.0, 30.0); n];
        let mut edges: Vec<(usize, usize)> = (1..n).map(|i| (i - 1, i)).collect();
        edges.extend((4..n).step_by(4).map(|i| (i - 4, i)));
        let start = std::time::Instant::now();
        let l = layout(&sizes, &edges, 0.0);
        assert!(start.elapsed().as_secs_f64() < 5.0, "{:?}", start.elapsed());
        assert_eq!(l.nodes.len(), n);
        assert!(l.nodes.iter().all(|p| p.0.is_finite() && p.1.is_finite()));
    }
}

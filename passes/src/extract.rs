//! Extraction: the cheapest e-node of every e-class under [`CostModel`], computed with a
//! worklist in time near-linear in the e-graph's size.
//!
//! egg's `Extractor` recomputes every class's cost in whole passes over the classes until
//! nothing changes; on a long chain visited in hash order that takes as many passes as the
//! chain is long, so a 10,000-node graph spent minutes there. Here a class is recomputed only
//! when one of its children gets a (better) cost, children before parents, which computes
//! each class of a DAG once. The result is the same fixpoint: every class gets the cheapest
//! of its e-nodes whose children all have costs, a cost only ever decreases, and among equal
//! costs the first e-node of the class wins.

use crate::analysis::QEGraph;
use crate::cost::{Cost, CostModel};
use crate::lang::QNode;
use crate::PassError;
use egg::{CostFunction, Id, Language};
use std::cmp::Ordering;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// The cheapest e-node of each e-class.
pub struct Extraction<'a> {
    egraph: &'a QEGraph,
    best: HashMap<Id, (Cost, usize)>,
}

/// The canonical classes of `egraph`, each after the classes its e-nodes read (where a
/// cycle makes that impossible, after those the walk reached first). Iterative: e-graphs of
/// long chains are deep.
fn post_order(egraph: &QEGraph) -> Vec<Id> {
    let mut ids: Vec<Id> = egraph.classes().map(|c| c.id).collect();
    ids.sort_unstable();
    let children = |c: Id| -> Vec<Id> {
        let mut k: Vec<Id> = egraph[c]
            .nodes
            .iter()
            .flat_map(|n| n.children().iter().map(|&x| egraph.find(x)))
            .collect();
        k.sort_unstable();
        k.dedup();
        k
    };
    let mut seen: std::collections::HashSet<Id> =
        std::collections::HashSet::with_capacity(ids.len());
    let mut order = Vec::with_capacity(ids.len());
    for &start in &ids {
        if !seen.insert(start) {
            continue;
        }
        let mut stack: Vec<(Id, Vec<Id>, usize)> = vec![(start, children(start), 0)];
        while let Some((c, kids, next)) = stack.last_mut() {
            if let Some(&k) = kids.get(*next) {
                *next += 1;
                if seen.insert(k) {
                    let grandchildren = children(k);
                    stack.push((k, grandchildren, 0));
                }
            } else {
                order.push(*c);
                stack.pop();
            }
        }
    }
    order
}

/// A total order on costs: fewer nodes, then less work (NaN last, so it never wins).
fn compare(a: &Cost, b: &Cost) -> Ordering {
    a.nodes
        .cmp(&b.nodes)
        .then_with(|| a.work.total_cmp(&b.work))
}

impl<'a> Extraction<'a> {
    /// Computes the cheapest e-node of every class of `egraph`.
    pub fn new(egraph: &'a QEGraph) -> Extraction<'a> {
        let mut cost_model = CostModel { egraph };
        let mut best: HashMap<Id, (Cost, usize)> =
            HashMap::with_capacity(egraph.number_of_classes());
        // Classes are processed children first (a post-order of the e-graph, cycles cut
        // where the walk meets them), lowest rank first: in a DAG every class is then
        // computed once its children are final, so an improvement is not propagated up a
        // long chain again and again (which a first-in first-out queue did, quadratically,
        // on the rewritten chains of fold-bn).
        let order = post_order(egraph);
        let rank: HashMap<Id, usize> = order.iter().enumerate().map(|(i, &c)| (c, i)).collect();
        let mut queue: BinaryHeap<Reverse<(usize, Id)>> = order
            .iter()
            .enumerate()
            .map(|(i, &c)| Reverse((i, c)))
            .collect();
        let mut queued: std::collections::HashSet<Id> = order.iter().copied().collect();
        while let Some(Reverse((_, id))) = queue.pop() {
            queued.remove(&id);
            let class = &egraph[id];
            let mut pick: Option<(Cost, usize)> = None;
            for (index, node) in class.nodes.iter().enumerate() {
                if !node.all(|c| best.contains_key(&egraph.find(c))) {
                    continue;
                }
                let cost = cost_model.cost(node, |c| best[&egraph.find(c)].0);
                if pick
                    .as_ref()
                    .is_none_or(|(p, _)| compare(&cost, p) == Ordering::Less)
                {
                    pick = Some((cost, index));
                }
            }
            let Some(new) = pick else { continue };
            let improved = best
                .get(&id)
                .is_none_or(|old| compare(&new.0, &old.0) == Ordering::Less);
            if improved {
                best.insert(id, new);
                for parent in class.parents() {
                    let parent = egraph.find(parent);
                    if queued.insert(parent) {
                        queue.push(Reverse((
                            rank.get(&parent).copied().unwrap_or(usize::MAX),
                            parent,
                        )));
                    }
                }
            }
        }
        Extraction { egraph, best }
    }

    /// The cheapest e-node of the class of `id`; an error when the class has none whose
    /// operands can all be built (only cycles), which no pass should produce.
    pub fn best_node(&self, id: Id) -> Result<&'a QNode, PassError> {
        let id = self.egraph.find(id);
        let (_, index) = self
            .best
            .get(&id)
            .ok_or_else(|| PassError::Bug(format!("e-class {id} has no finite term to extract")))?;
        Ok(&self.egraph[id].nodes[*index])
    }

    /// The cost of the term extracted for the class of `id`.
    pub fn best_cost(&self, id: Id) -> Option<Cost> {
        self.best.get(&self.egraph.find(id)).map(|(c, _)| *c)
    }
}

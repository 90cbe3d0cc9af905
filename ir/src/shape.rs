//! Static shapes with symbolic dimensions: the batch, named dimensions of the model's
//! inputs (a sequence length, an image's height), and extents known only once those are
//! bound.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

/// A named dimension other than the batch (an ONNX `dim_param` such as `sequence`),
/// interned so that [`Dim`] stays `Copy` and compares in O(1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Symbol(u32);

/// The process-wide symbol table: names by id and ids by name.
fn table() -> &'static Mutex<(Vec<String>, HashMap<String, u32>)> {
    static TABLE: OnceLock<Mutex<(Vec<String>, HashMap<String, u32>)>> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

impl Symbol {
    /// The symbol called `name` (the same symbol for the same name, process-wide).
    pub fn new(name: &str) -> Symbol {
        let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&id) = t.1.get(name) {
            return Symbol(id);
        }
        let id = t.0.len() as u32;
        t.0.push(name.to_string());
        t.1.insert(name.to_string(), id);
        Symbol(id)
    }

    /// The symbol's name.
    pub fn name(self) -> String {
        let t = table().lock().unwrap_or_else(|e| e.into_inner());
        t.0.get(self.0 as usize).cloned().unwrap_or_default()
    }
}

/// One dimension of a static shape.
///
/// Models compile for every batch size at once: `Batch` (printed `N`) is a run-time value
/// of compiled code. Other symbolic dimensions (`Sym`) and extents that depend on them or
/// on values (`Dyn`, printed `?`) are bound before code generation by
/// [`crate::specialize()`], which substitutes them and folds the shape arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A known extent.
    Fixed(usize),
    /// The batch size, bound when the graph runs.
    Batch,
    /// A named dimension of a graph input, bound when the graph is specialized.
    Sym(Symbol),
    /// An extent known only once symbols (or the values of shape operands) are bound.
    Dyn,
}

impl Dim {
    /// The extent once the batch size is known. Only for specialized shapes (no `Sym` or
    /// `Dyn`, see [`Shape::is_specialized`]): those resolve to 0, and every caller (the
    /// interpreter, code generation) checks for them first.
    pub fn resolve(self, batch: usize) -> usize {
        match self {
            Dim::Fixed(n) => n,
            Dim::Batch => batch,
            Dim::Sym(_) | Dim::Dyn => 0,
        }
    }

    /// The extent if it does not depend on the batch or on any other symbol.
    pub fn fixed(self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(n),
            _ => None,
        }
    }

    /// Whether the extent is only known once symbols or values are bound (`Sym` or `Dyn`).
    pub fn is_unbound(self) -> bool {
        matches!(self, Dim::Sym(_) | Dim::Dyn)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Batch => f.write_str("N"),
            Dim::Sym(s) => f.write_str(&s.name()),
            Dim::Dyn => f.write_str("?"),
        }
    }
}

/// A static shape: a list of dimensions, possibly symbolic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    /// A shape of known extents only.
    pub fn fixed(dims: &[usize]) -> Shape {
        Shape(dims.iter().map(|&d| Dim::Fixed(d)).collect())
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// The dimensions.
    pub fn dims(&self) -> &[Dim] {
        &self.0
    }

    /// Whether the batch symbol occurs in the shape.
    pub fn has_batch(&self) -> bool {
        self.0.contains(&Dim::Batch)
    }

    /// Whether every dimension is known or the batch: what code generation and the
    /// interpreter's kernels take.
    pub fn is_specialized(&self) -> bool {
        !self.0.iter().any(|d| d.is_unbound())
    }

    /// The concrete extents once the batch size is known (specialized shapes only).
    pub fn resolve(&self, batch: usize) -> Vec<usize> {
        self.0.iter().map(|d| d.resolve(batch)).collect()
    }

    /// Whether `extents` is this (specialized) shape with the batch bound to `batch` (no
    /// allocation: what a compiled model checks on every call).
    pub fn matches(&self, batch: usize, extents: &[usize]) -> bool {
        self.0.len() == extents.len()
            && self
                .0
                .iter()
                .zip(extents)
                .all(|(d, &e)| !d.is_unbound() && d.resolve(batch) == e)
    }

    /// The concrete extents if no dimension is symbolic.
    pub fn as_fixed(&self) -> Option<Vec<usize>> {
        self.0.iter().map(|d| d.fixed()).collect()
    }

    /// Product of the known extents and how many times the batch symbol occurs:
    /// the element count is `N^batch_power * fixed_product`. `None` on overflow, and for
    /// shapes that are not specialized.
    pub fn volume(&self) -> Option<(usize, usize)> {
        let mut product = 1usize;
        let mut batch_power = 0;
        for d in &self.0 {
            match d {
                Dim::Fixed(n) => product = product.checked_mul(*n)?,
                Dim::Batch => batch_power += 1,
                Dim::Sym(_) | Dim::Dyn => return None,
            }
        }
        Some((product, batch_power))
    }

    /// Product of the known extents only (symbolic ones count as 1): a lower bound on the
    /// element count, for size limits checked before symbols are bound. `None` on overflow.
    pub fn known_volume(&self) -> Option<usize> {
        self.0
            .iter()
            .try_fold(1usize, |acc, d| acc.checked_mul(d.fixed().unwrap_or(1)))
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

impl From<Vec<Dim>> for Shape {
    fn from(dims: Vec<Dim>) -> Shape {
        Shape(dims)
    }
}

/// An element of an integer tensor as the specializer knows it: a number, or a symbolic
/// extent (`Shape` of a value with symbolic dimensions, and what `Gather`, `Concat`,
/// `Unsqueeze`... make of it). `Dim(Dim::Dyn)` is an element nothing is known about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SymInt {
    /// A known integer.
    Int(i64),
    /// A symbolic extent (never `Dim::Fixed`: known extents are `Int`).
    Dim(Dim),
}

impl SymInt {
    /// The element standing for extent `d`.
    pub fn of_dim(d: Dim) -> SymInt {
        match d {
            Dim::Fixed(n) => SymInt::Int(n as i64),
            d => SymInt::Dim(d),
        }
    }

    /// The extent this element gives when used as a dimension (negative integers are not
    /// extents).
    pub fn as_dim(self) -> Option<Dim> {
        match self {
            SymInt::Int(n) => usize::try_from(n).ok().map(Dim::Fixed),
            SymInt::Dim(d) => Some(d),
        }
    }

    /// The integer, if known.
    pub fn int(self) -> Option<i64> {
        match self {
            SymInt::Int(n) => Some(n),
            SymInt::Dim(_) => None,
        }
    }
}

/// A product of extents kept as a number times a multiset of symbols (`12·N·sequence`):
/// enough to check that a reshape keeps the element count, and to infer its `-1`, when
/// dimensions are symbolic. `None` when an extent is unknown (`Dyn`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Monomial {
    /// The product of the known extents.
    pub coefficient: u128,
    /// The symbolic extents (Batch and Sym), sorted.
    pub symbols: Vec<Dim>,
}

impl Monomial {
    /// The product of `dims`, or `None` if one is unknown.
    pub fn of(dims: &[Dim]) -> Option<Monomial> {
        let mut coefficient: u128 = 1;
        let mut symbols = Vec::new();
        for &d in dims {
            match d {
                Dim::Fixed(n) => coefficient = coefficient.checked_mul(n as u128)?,
                Dim::Dyn => return None,
                d => symbols.push(d),
            }
        }
        symbols.sort_by_key(|d| match d {
            Dim::Batch => (0, 0),
            Dim::Sym(s) => (1, s.0),
            _ => (2, 0),
        });
        Some(Monomial {
            coefficient,
            symbols,
        })
    }

    /// `self / other` as one extent, when it is one: a number (`other`'s symbols all in
    /// `self`'s, none left) or a single symbol with coefficient 1.
    pub fn divide(&self, other: &Monomial) -> Option<Dim> {
        if other.coefficient == 0 || self.coefficient % other.coefficient != 0 {
            return None;
        }
        let mut rest = self.symbols.clone();
        for s in &other.symbols {
            let i = rest.iter().position(|r| r == s)?;
            rest.remove(i);
        }
        let c = self.coefficient / other.coefficient;
        match rest.as_slice() {
            [] => usize::try_from(c).ok().map(Dim::Fixed),
            [d] if c == 1 => Some(*d),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_intern_by_name() {
        let a = Symbol::new("sequence");
        assert_eq!(a, Symbol::new("sequence"));
        assert_ne!(a, Symbol::new("height"));
        assert_eq!(a.name(), "sequence");
        let s = Shape(vec![Dim::Batch, Dim::Sym(a), Dim::Dyn, Dim::Fixed(3)]);
        assert_eq!(s.to_string(), "[N,sequence,?,3]");
        assert!(!s.is_specialized());
        assert_eq!(s.volume(), None);
        assert_eq!(s.known_volume(), Some(3));
    }

    #[test]
    fn monomials_divide_into_one_extent() {
        let seq = Dim::Sym(Symbol::new("seq"));
        let x = Monomial::of(&[Dim::Batch, seq, Dim::Fixed(384)]).unwrap();
        let y = Monomial::of(&[Dim::Batch, Dim::Fixed(12), Dim::Fixed(32)]).unwrap();
        assert_eq!(x.divide(&y), Some(seq));
        let z = Monomial::of(&[seq, Dim::Fixed(384)]).unwrap();
        assert_eq!(x.divide(&z), Some(Dim::Batch));
        assert_eq!(x.divide(&Monomial::of(&[Dim::Fixed(384)]).unwrap()), None);
        assert!(Monomial::of(&[Dim::Dyn]).is_none());
    }
}

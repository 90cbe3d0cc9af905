//! Static shapes with one symbolic batch dimension.

use std::fmt;

/// One dimension of a static shape.
///
/// Models are compiled for every batch size at once, so one symbol, `N`, stands for the
/// batch; every other dimension is a known constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A known extent.
    Fixed(usize),
    /// The batch size, bound when the graph runs.
    Batch,
}

impl Dim {
    /// The extent once the batch size is known.
    pub fn resolve(self, batch: usize) -> usize {
        match self {
            Dim::Fixed(n) => n,
            Dim::Batch => batch,
        }
    }

    /// The extent if it does not depend on the batch.
    pub fn fixed(self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(n),
            Dim::Batch => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Batch => f.write_str("N"),
        }
    }
}

/// A static shape: a list of dimensions, possibly including the batch symbol.
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

    /// The concrete extents once the batch size is known.
    pub fn resolve(&self, batch: usize) -> Vec<usize> {
        self.0.iter().map(|d| d.resolve(batch)).collect()
    }

    /// Whether `extents` is this shape with the batch bound to `batch` (no allocation: what
    /// a compiled model checks on every call).
    pub fn matches(&self, batch: usize, extents: &[usize]) -> bool {
        self.0.len() == extents.len() && self.0.iter().zip(extents).all(|(d, &e)| d.resolve(batch) == e)
    }

    /// The concrete extents if no dimension depends on the batch.
    pub fn as_fixed(&self) -> Option<Vec<usize>> {
        self.0.iter().map(|d| d.fixed()).collect()
    }

    /// Product of the known extents and how many times the batch symbol occurs:
    /// the element count is `N^batch_power * fixed_product`. `None` on overflow.
    pub fn volume(&self) -> Option<(usize, usize)> {
        let mut product = 1usize;
        let mut batch_power = 0;
        for d in &self.0 {
            match d {
                Dim::Fixed(n) => product = product.checked_mul(*n)?,
                Dim::Batch => batch_power += 1,
            }
        }
        Some((product, batch_power))
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

//! PLACEHOLDER: Graphviz export is being written.

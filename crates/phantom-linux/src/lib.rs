//! The only crate with `unsafe`: small typed wrappers, one per kernel operation.
pub mod attempt;

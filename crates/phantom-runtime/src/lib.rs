//! The Phantom Fragment engine.
#![forbid(unsafe_code)]

//! Deliberate attempts at forbidden operations, used by phantom-probe.

//! Prometheus metrics (`/metrics`).

pub mod counters;

pub use counters::{Counter, DropReason, MediaCounters};

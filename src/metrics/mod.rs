//! Prometheus metrics (`/metrics`): counters owned by the tasks that do the work
//! (`counters`), the rule of who may read them (`access`), and the exposition
//! (`exposition`, encoded by `prometheus-client`).

pub mod access;
pub(crate) mod collect;
pub mod counters;
pub mod exposition;
pub mod process;
pub mod signalling;

pub use access::allowed;
pub use counters::{
    Counter, DropReason, Gauge, MediaCounters, RefusalReason, RtmpSession, SignallingCounters,
};
pub use exposition::{encode_sample, Sample, CONTENT_TYPE};

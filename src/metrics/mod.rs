//! Prometheus metrics (`/metrics`): counters owned by the tasks that do the work
//! (`counters`) and the exposition (`exposition`, encoded by `prometheus-client`). Who
//! may read them is the admin API's rule (`server::access`, `server::api::Gate`) plus
//! loopback and `[metrics] allow`.

pub(crate) mod collect;
pub mod counters;
pub mod exposition;
pub mod process;
pub mod signalling;

pub use counters::{
    Counter, DropReason, Gauge, MediaCounters, RefusalReason, RtmpSession, SignallingCounters,
    Workers, MAX_WORKERS,
};
pub use exposition::{encode_sample, DeviceFrames, Sample, CONTENT_TYPE};

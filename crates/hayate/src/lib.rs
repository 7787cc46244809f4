//! hayate's trainer: the pieces the `hayate` binary wires together, as a library so tests and
//! other programs can drive a run.

pub mod backend;
pub mod batches;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod consistency;
pub mod convergence;
pub mod dataset;
pub mod ema;
pub mod feature_net;
pub mod fid;
pub mod inception;
pub mod lr;
pub mod metric;
pub mod optim;
pub mod plot;
pub mod progress;
pub mod run_dir;
pub mod sample;
pub mod step;
pub mod train;

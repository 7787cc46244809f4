//! hayate's training library: the run configuration, the run itself (start, resume, the learning
//! strategy, the end-of-interval work), the step, the scheduled Adam, the learning rate, EMA,
//! checkpoints, host-side batches, the dataset opener and the run folder's layout.
//!
//! It knows nothing of evaluation or charts: the work done at the end of each checkpoint interval
//! beyond the checkpoint (sample grids, FID, charts; `hayate-eval` has them) is registered by the
//! caller as [`train::IntervalHook`]s.

pub mod backend;
pub mod batches;
pub mod checkpoint;
pub mod config;
pub mod dataset;
pub mod ema;
pub mod lr;
pub mod metric;
pub mod optim;
pub mod progress;
pub mod run_dir;
pub mod step;
pub mod train;

//! hayate's benchmarks: training and sampling throughput ([`throughput`], timing the real
//! training step), and the convergence benchmark ([`convergence`]: config, runner, report) with
//! the feature network that scores it ([`feature_net`]), and the processor every CPU figure names
//! ([`processor`]); the op-by-op profile of a step ([`ops`]).

pub mod convergence;
pub mod feature_net;
pub mod ops;
pub mod processor;
pub mod throughput;

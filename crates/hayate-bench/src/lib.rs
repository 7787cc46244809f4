//! hayate's benchmarks: training and sampling throughput ([`throughput`], timing the real
//! training step), and the convergence benchmark ([`convergence`]: config, runner, report) with
//! the feature network that scores it ([`feature_net`]).

pub mod convergence;
pub mod feature_net;
pub mod throughput;

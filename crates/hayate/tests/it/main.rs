//! The trainer's integration tests, in one test binary: one link of the whole stack instead of one
//! per file, and libtest runs the files' tests side by side on its threads instead of one binary
//! after another. Tests start in name order, so the longest one, `backends` (WGPU on software
//! Vulkan in CI, mostly one core), sorts first and the CPU tests run beside it.

mod backends;
mod bench_convergence;
mod common;
mod crash;
mod data;
mod diffusers;
mod fid;
mod fused_ops;
mod train_cpu;
mod train_folder;

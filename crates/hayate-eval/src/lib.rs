//! Evaluating hayate models: sampling from a checkpoint and writing grids, FID (statistics, the
//! reference cache, the Inception network), the consistency measurement, and the PNG charts; and
//! the training run's end-of-interval hooks built from them ([`interval`]); and models moved to
//! and from diffusers ([`diffusers`], with the weight files in [`weights`]).

pub mod consistency;
pub mod diffusers;
#[cfg(test)]
mod dit_reference;
pub mod fid;
pub mod inception;
pub mod interval;
pub mod plot;
pub mod sample;
pub mod weights;

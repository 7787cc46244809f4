//! Diffusion math for hayate, as plain host-side `f64` functions.
//!
//! Everything here runs on the CPU, from explicit seeded generators, so every backend and every
//! GPU sees the same numbers: the noise schedules and forward-process coefficients
//! ([`NoiseSchedule`]), the prediction targets ([`Prediction`]), the timestep samplers
//! ([`TimestepSampler`]), and the DDPM, DDIM, DPM-Solver++(2M) and Karras-grid Euler and Heun
//! samplers ([`ddpm`], [`ddim`], [`dpm_solver`], [`karras`]) that take the model as a
//! [`Denoiser`].

mod assignment;
pub mod ddim;
pub mod ddpm;
mod denoiser;
pub mod dpm_solver;
pub mod karras;
mod momentum;
mod noise;
mod prediction;
mod rng;
mod sampler;
pub mod timesteps;
mod weights;

pub use assignment::{NoiseAssignment, linear_assignment};
pub use denoiser::Denoiser;
pub use momentum::{Compensation, MomentumDecay, MomentumSchedule, MomentumShape};
pub use noise::{BetaSchedule, NoiseSchedule, ScheduleError};
pub use prediction::Prediction;
pub use rng::{HostRng, fill_standard_normal, standard_normal};
pub use sampler::{Sampler, SamplerSpec, Solver};
pub use timesteps::{TimestepSampler, TimestepSamplerConfig};
pub use weights::LossWeight;

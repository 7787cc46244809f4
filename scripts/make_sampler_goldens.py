#!/usr/bin/env python3
"""Write golden trajectories of diffusers' own schedulers for hayate-schedule's sampler tests.

For each case, diffusers' scheduler (DDPM's linear betas 1e-4..0.02 over 1000 steps) runs the
reverse process from fixed starting values with a toy stand-in for the network,
out = 0.5 x + 0.001 t - 0.1 (the same toy the Rust tests use), and the script records the
timesteps visited and the samples along the way:
- DPM-Solver++(2M), "trailing" timestep spacing as hayate's DDIM uses: the sample after every step;
- Euler and Heun on the Karras sigma grid ("linspace" spacing, as Karras et al.): every network
  input (scale_model_input's output, so Heun's correction points too) and the final sample, with
  the real (fractional) timestep of every evaluation.
Nothing is downloaded; nothing random is drawn (the solvers here are deterministic).

Usage:
  python scripts/make_sampler_goldens.py > crates/hayate-schedule/fixtures/diffusers_samplers.json
Needs: torch, diffusers (written with torch 2.15, diffusers 0.42.1), numpy.
"""
import json
import sys

import diffusers
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)

START = [1.3, -0.7, 0.1, 2.2, -1.9, 0.45]


def toy(x, t):
    return 0.5 * x + 0.001 * float(t) - 0.1


def dpm_solver_pp_2m(prediction, steps):
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        solver_order=2,
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        prediction_type=prediction,
        timestep_spacing="trailing",
        final_sigmas_type="zero",
        lower_order_final=True,
        thresholding=False,
    )
    scheduler.set_timesteps(steps)
    x = torch.tensor(START, dtype=torch.float32)
    trajectory = []
    for t in scheduler.timesteps:
        x = scheduler.step(toy(x, int(t)), t, x).prev_sample
        trajectory.append([float(v) for v in x])
    return {
        "sampler": "dpm-solver++(2m)",
        "prediction": prediction,
        "steps": steps,
        "timesteps": [int(t) for t in scheduler.timesteps],
        "start": START,
        "trajectory": trajectory,
    }


def karras(name, prediction, steps):
    kind = {"euler-karras": EulerDiscreteScheduler, "heun-karras": HeunDiscreteScheduler}[name]
    scheduler = kind(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type=prediction,
        use_karras_sigmas=True,
        timestep_spacing="linspace",
    )
    scheduler.set_timesteps(steps)
    x = torch.tensor(START, dtype=torch.float32) * scheduler.init_noise_sigma
    trajectory = []
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        trajectory.append([float(v) for v in model_input])
        x = scheduler.step(toy(model_input, float(t)), t, x).prev_sample
    trajectory.append([float(v) for v in x])
    return {
        "sampler": name,
        "prediction": prediction,
        "steps": steps,
        "timesteps": [float(t) for t in scheduler.timesteps],
        "start": START,
        "trajectory": trajectory,
    }


PREDICTIONS = ["epsilon", "v_prediction", "sample"]
cases = [
    dpm_solver_pp_2m(prediction, steps) for prediction in PREDICTIONS for steps in [10, 25]
] + [
    karras(name, prediction, steps)
    for name in ["euler-karras", "heun-karras"]
    for prediction in PREDICTIONS
    for steps in [5, 18]
]
json.dump(
    {
        "made_by": f"scripts/make_sampler_goldens.py (torch {torch.__version__}, "
        f"diffusers {diffusers.__version__})",
        "cases": cases,
    },
    sys.stdout,
    indent=1,
)
sys.stdout.write("\n")

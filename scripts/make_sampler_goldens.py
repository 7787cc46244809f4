#!/usr/bin/env python3
"""Write golden trajectories of diffusers' own schedulers for hayate-schedule's sampler tests.

For each case, diffusers' scheduler (DDPM's linear betas 1e-4..0.02 over 1000 steps, "trailing"
timestep spacing as hayate's DDIM uses) runs the reverse process from fixed starting values with
a toy stand-in for the network, out = 0.5 x + 0.001 t - 0.1 (the same toy the Rust tests use),
and the script records the timesteps visited and the sample after every step. Nothing is
downloaded; nothing random is drawn (the solvers here are deterministic).

Usage:
  python scripts/make_sampler_goldens.py > crates/hayate-schedule/fixtures/diffusers_samplers.json
Needs: torch, diffusers (written with torch 2.15, diffusers 0.42.1), numpy.
"""
import json
import sys

import diffusers
import torch
from diffusers import DPMSolverMultistepScheduler

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


cases = [
    dpm_solver_pp_2m(prediction, steps)
    for prediction in ["epsilon", "v_prediction", "sample"]
    for steps in [10, 25]
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

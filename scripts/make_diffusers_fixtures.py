#!/usr/bin/env python3
"""Write the diffusers fixtures for hayate's import and export tests, or check an export.

Each fixture is a small diffusers UNet2DModel with fixed random weights (every tensor, norms
included, drawn from a seeded generator), saved as diffusers saves it (config.json,
diffusion_pytorch_model.safetensors) with a DDPMScheduler's scheduler_config.json, and an
io.safetensors holding an input batch (x, t, labels as floats) and the model's output on it.
The ddpm fixture also has karras.safetensors: a start x (one image), and what diffusers'
HeunDiscreteScheduler and EulerDiscreteScheduler (Karras sigmas, 4 of them, "linspace" spacing,
built from the fixture's scheduler config, x_0 unclipped) draw from it with the fixture's model: the whole
sampling loop, fractional timesteps into the UNet included.
  ddpm: DDPM's layout as the DDPM authors' CIFAR-10 weights have it in diffusers (eps 1e-6,
        TensorFlow-style downsample padding, one head, attention on the middle level), with the
        attention tensors under their pre-0.14 names (query, key, value, proj_attn) as those
        published weights carry them; the script checks diffusers still loads it.
  plain: hayate's own presets' form (padding on both sides, eps 1e-5, two residual blocks
        per level), x_0 prediction.
  adm:  ADM's options: scale-shift norm, resampling residual blocks, 4 channels per head, a
        linear-to-cosine schedule, class labels (with hayate's "no label" row marked).
Nothing is downloaded.

Usage:
  python scripts/make_diffusers_fixtures.py crates/hayate-eval/fixtures/diffusers
  python scripts/make_diffusers_fixtures.py --karras crates/hayate-eval/fixtures/diffusers
      (only karras.safetensors, from the fixture already there)
  python scripts/make_diffusers_fixtures.py --check-export EXPORTED_DIR FIXTURE_DIR
      (loads a folder `hayate export` wrote with UNet2DModel.from_pretrained and
      DDPMScheduler.from_pretrained, runs it on FIXTURE_DIR/io.safetensors, compares)
Needs: torch, diffusers (written with torch 2.15, diffusers 0.42.1), safetensors, numpy.
"""
import json
import os
import sys

import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler, UNet2DModel
from safetensors.torch import load_file, save_file

CASES = {
    "ddpm": dict(
        model=dict(
            sample_size=16,
            in_channels=3,
            out_channels=3,
            block_out_channels=(8, 16, 16),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=None,
            norm_num_groups=4,
            norm_eps=1e-6,
            downsample_padding=0,
            freq_shift=1,
            flip_sin_to_cos=False,
            dropout=0.1,
        ),
        scheduler=dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                       beta_end=0.02, variance_type="fixed_large", prediction_type="epsilon"),
        labels=None,
        deprecated_names=True,
    ),
    "plain": dict(
        model=dict(
            sample_size=16,
            in_channels=3,
            out_channels=3,
            block_out_channels=(8, 16),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=None,
            norm_num_groups=4,
            freq_shift=1,
            flip_sin_to_cos=False,
        ),
        scheduler=dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                       beta_end=0.02, prediction_type="sample"),
        labels=None,
        deprecated_names=False,
    ),
    "adm": dict(
        model=dict(
            sample_size=16,
            in_channels=3,
            out_channels=3,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("AttnDownBlock2D", "ResnetDownsampleBlock2D"),
            up_block_types=("ResnetUpsampleBlock2D", "AttnUpBlock2D"),
            downsample_type="resnet",
            upsample_type="resnet",
            resnet_time_scale_shift="scale_shift",
            attention_head_dim=4,
            norm_num_groups=4,
            attn_norm_num_groups=4,
            freq_shift=1,
            flip_sin_to_cos=False,
            num_class_embeds=5,
        ),
        scheduler=dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                       variance_type="fixed_small", prediction_type="v_prediction"),
        labels=[1.0, 4.0],
        deprecated_names=False,
    ),
}

DEPRECATED = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def inputs(case):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 16, 16, generator=g)
    t = torch.tensor([7.0, 913.0])
    labels = None if case["labels"] is None else torch.tensor(case["labels"])
    return x, t, labels


def run(model, x, t, labels):
    with torch.no_grad():
        kwargs = {} if labels is None else {"class_labels": labels.long()}
        return model(x, t, **kwargs).sample


def make(root):
    for name, case in CASES.items():
        out = os.path.join(root, name)
        os.makedirs(out, exist_ok=True)
        torch.manual_seed(0)
        model = UNet2DModel(**case["model"]).eval()
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        model.save_pretrained(out, safe_serialization=True)
        DDPMScheduler(**case["scheduler"]).save_pretrained(out)
        config_path = os.path.join(out, "config.json")
        if case["labels"] is not None:
            with open(config_path) as f:
                config = json.load(f)
            config["_hayate_null_class"] = True
            with open(config_path, "w") as f:
                json.dump(config, f, indent=2, sort_keys=True)
                f.write("\n")
        weights = os.path.join(out, "diffusion_pytorch_model.safetensors")
        if case["deprecated_names"]:
            state = load_file(weights)
            renamed = {}
            for key, value in state.items():
                for new, old in DEPRECATED.items():
                    if ".attentions." in key and f".{new}." in key:
                        key = key.replace(f".{new}.", f".{old}.")
                renamed[key] = value.contiguous()
            save_file(renamed, weights, metadata={"format": "pt"})
        x, t, labels = inputs(case)
        y = run(model, x, t, labels)
        # diffusers itself must read the saved folder (old names included) to the same output.
        again = run(UNet2DModel.from_pretrained(out).eval(), x, t, labels)
        assert torch.equal(y, again), f"{name}: diffusers does not read its own folder back"
        io = {"x": x, "t": t, "out": y.contiguous()}
        if labels is not None:
            io["labels"] = labels
        save_file(io, os.path.join(out, "io.safetensors"))
        print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, "
              f"|out| max {y.abs().max():.3f}")


KARRAS_STEPS = 4


def make_karras(root):
    folder = os.path.join(root, "ddpm")
    model = UNet2DModel.from_pretrained(folder).eval()
    config = DDPMScheduler.from_pretrained(folder).config
    start = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(11))
    out = {"start": start}
    for name, kind in [("heun", HeunDiscreteScheduler), ("euler", EulerDiscreteScheduler)]:
        # Unclipped (Heun would take DDPMScheduler's clip_sample): the x_0 of a random network
        # clipped to [-1, 1] would hide most of the arithmetic.
        scheduler = kind.from_config(
            config, use_karras_sigmas=True, timestep_spacing="linspace", clip_sample=False
        )
        scheduler.set_timesteps(KARRAS_STEPS)
        x = start * scheduler.init_noise_sigma
        with torch.no_grad():
            for t in scheduler.timesteps:
                y = model(scheduler.scale_model_input(x, t), t).sample
                x = scheduler.step(y, t, x).prev_sample
        out[name] = x.contiguous()
        print(f"karras {name}: {len(scheduler.timesteps)} evaluations, |x| max {x.abs().max():.3f}")
    save_file(out, os.path.join(folder, "karras.safetensors"))


def check_export(exported, fixture):
    model = UNet2DModel.from_pretrained(exported).eval()
    scheduler = DDPMScheduler.from_pretrained(exported)
    io = load_file(os.path.join(fixture, "io.safetensors"))
    y = run(model, io["x"], io["t"], io.get("labels"))
    diff = (y - io["out"]).abs().max().item()
    print(f"{exported}: loaded by diffusers ({type(scheduler).__name__}, "
          f"{scheduler.config.beta_schedule}, {scheduler.config.prediction_type}); "
          f"max |diffusers(export) - fixture output| = {diff:.2e}")
    assert diff < 1e-4, diff


if __name__ == "__main__":
    if sys.argv[1] == "--check-export":
        check_export(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "--karras":
        make_karras(sys.argv[2])
    else:
        make(sys.argv[1])
        make_karras(sys.argv[1])

"""PyTorch side of `hayate bench throughput`: the same UNet layout (diffusers' UNet2DModel laid
out like hayate's preset), the same training step (noise-prediction MSE at uniform t on DDPM's
linear schedule, global-norm clipping at 1.0, Adam, EMA) and the same sampling step, timed after
warm-up on the same machine. Prints one JSON line for hayate to read.

Usage: python benches/torch_throughput.py --preset ddpm_cifar10 --batch 8 --steps 5 [--device cpu]
"""

import argparse
import json
import os
import time

import torch
from diffusers import UNet2DModel

# diffusers layouts of hayate's presets: one entry per level, attention where hayate has it,
# one head per attention block (attention_head_dim=None), as in DDPM.
LAYOUTS = {
    "ddpm_cifar10": dict(
        sample_size=32,
        block_out_channels=(128, 256, 256, 256),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
        dropout=0.1,
    ),
    "tiny": dict(
        sample_size=32,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        dropout=0.0,
    ),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", choices=sorted(LAYOUTS), default="ddpm_cifar10")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--sample-steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    layout = LAYOUTS[args.preset]
    model = UNet2DModel(attention_head_dim=None, **layout).to(device)
    ema = UNet2DModel(attention_head_dim=None, **layout).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.999), eps=1e-8)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0).float().to(device)
    size, n = layout["sample_size"], args.batch
    x0 = torch.rand(n, 3, size, size, device=device) * 2 - 1

    def train_step():
        t = torch.randint(0, 1000, (n,), device=device)
        eps = torch.randn_like(x0)
        ab = alpha_bar[t].view(n, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        loss = torch.nn.functional.mse_loss(model(x_t, t).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - 0.9999)
        return loss

    def timed(fn, count):
        for _ in range(count):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(count):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    model.train()
    train_seconds = timed(train_step, args.steps)

    x = torch.randn_like(x0)

    @torch.no_grad()
    def sample_step():
        t = torch.full((n,), 500, device=device)
        return ema(x, t).sample

    ema.eval()
    sample_seconds = timed(sample_step, args.sample_steps)

    # The kernel that dominates a step, alone: hayate's `conv_kernel`.
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(device)
    cx = torch.rand(n, 128, 32, 32, device=device)

    def conv_forward():
        with torch.no_grad():
            conv(cx).sum().item()

    def conv_both():
        conv.zero_grad(set_to_none=True)
        conv(cx).sum().backward()
        conv.weight.grad.sum().item()

    conv3x3 = {
        "forward": timed(conv_forward, args.steps) / args.steps,
        "forward_backward": timed(conv_both, args.steps) / args.steps,
    }
    print(
        json.dumps(
            {
                "preset": args.preset,
                "params": params,
                "batch": n,
                "train_images_per_second": n * args.steps / train_seconds,
                "sample_image_steps_per_second": n * args.sample_steps / sample_seconds,
                "conv3x3": conv3x3,
                "torch": torch.__version__,
                "device": str(device),
                "threads": torch.get_num_threads(),
                # The widest CPU kernels PyTorch dispatches to here (DEFAULT, AVX2, AVX512).
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()

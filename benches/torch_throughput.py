"""PyTorch side of `hayate bench throughput`: the same UNet layout (diffusers' UNet2DModel laid
out like hayate's preset), the same training step (noise-prediction MSE at uniform t on DDPM's
linear schedule, global-norm clipping at 1.0, Adam, EMA) and the same sampling step, timed after
warm-up on the same machine. Prints one JSON line for hayate to read.

Usage: python benches/torch_throughput.py --preset ddpm_cifar10 --batch 8 --steps 5 [--device cpu]
       [--precision f32|tf32|bf16] [--ops OPS.json]

--precision: f32 (the default; TF32 off), tf32 (CUDA's TF32 matrix products and convolutions) or
bf16 (autocast of the forward to bfloat16, with f32 weights, gradients and optimiser state, as
hayate's `train.precision = "bf16"`).

With --ops (written by `hayate bench throughput --phases`), also times each listed layer alone,
forward and backward apart, as hayate's op profile does, and the phases of a step.
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
    parser.add_argument("--precision", choices=("f32", "tf32", "bf16"), default="f32")
    parser.add_argument("--ops", help="hayate's op list (JSON) to time layer by layer")
    args = parser.parse_args()
    # PyTorch's own default for convolutions is TF32 on; f32 means full f32 here.
    tf32 = args.precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    autocast = torch.autocast(
        device_type=torch.device(args.device).type,
        dtype=torch.bfloat16,
        enabled=args.precision == "bf16",
    )
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
        with autocast:
            prediction = model(x_t, t).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), eps)
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
        with autocast:
            return ema(x, t).sample.float()

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
    extra = {}
    if args.ops:
        model.train()
        extra["phases"] = phases(model, ema, opt, x0, alpha_bar, args.steps, device)
        with open(args.ops) as f:
            extra["ops"] = profile_ops(json.load(f), device)
    print(
        json.dumps(
            {
                **extra,
                "preset": args.preset,
                "params": params,
                "batch": n,
                "precision": args.precision,
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


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# As hayate's profile (crates/hayate-bench/src/ops.rs): calls are timed until both this many
# seconds and `repeats` calls have passed, at most MAX_CALLS, and the median is taken.
MIN_SECONDS = 0.2
MAX_CALLS = 1000


def per_call(fn, repeats, device):
    """Median seconds per call of `fn` after one warm-up, as hayate's profile times its ops."""
    fn()
    sync(device)
    calls = []
    started = time.perf_counter()
    while len(calls) < MAX_CALLS and (
        len(calls) < max(repeats, 1) or time.perf_counter() - started < MIN_SECONDS
    ):
        call = time.perf_counter()
        fn()
        sync(device)
        calls.append(time.perf_counter() - call)
    calls.sort()
    return calls[len(calls) // 2]


def phases(model, ema, opt, x0, alpha_bar, steps, device):
    """Seconds of each phase of a training step, each waited for, averaged after one warm-up:
    the rows of hayate's phase table that PyTorch has."""
    n = x0.shape[0]
    params = list(model.parameters())
    totals = [0.0, 0.0, 0.0, 0.0]
    for step in range(steps + 1):
        marks = [time.perf_counter()]

        def lap():
            sync(device)
            marks.append(time.perf_counter())

        t = torch.randint(0, 1000, (n,), device=device)
        eps = torch.randn_like(x0)
        ab = alpha_bar[t].view(n, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        loss = torch.nn.functional.mse_loss(model(x_t, t).sample, eps)
        loss.item()
        lap()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        params[0].grad.sum().item()
        lap()
        opt.step()
        params[0].sum().item()
        lap()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), params, 1 - 0.9999)
        next(ema.parameters()).sum().item()
        lap()
        if step > 0:
            for i in range(4):
                totals[i] += marks[i + 1] - marks[i]
    names = ["forward and loss", "backward and gradient clipping", "optimiser (Adam)", "EMA update"]
    return {name: total / max(steps, 1) for name, total in zip(names, totals)}


def profile_ops(spec, device):
    """Each layer of hayate's list timed alone at its batch, the parts hayate times: forward,
    then backward (a convolution's input and weight gradients apart), backward times with the
    forward's taken off."""
    from diffusers.models.attention_processor import Attention

    F = torch.nn.functional
    n, repeats = spec["batch"], spec["repeats"]
    groups, eps = spec["norm_groups"], spec["norm_eps"]
    out = []

    def grad_time(fn, tensors):
        def run():
            leaves = [t.detach().requires_grad_(True) for t in tensors]
            fn(*leaves).sum().backward()
            for leaf in leaves:
                leaf.grad.sum().item()

        return run

    for layer in spec["layers"]:
        ((kind, p),) = layer.items()
        parts = []
        if kind == "Conv":
            cin, cout, k, s, r = (p[key] for key in ("in_channels", "out_channels", "kernel", "stride", "resolution"))
            x = torch.randn(n, cin, r, r, device=device)
            w = torch.randn(cout, cin, k, k, device=device)
            b = torch.randn(cout, device=device)

            def conv(x, w, b, s=s, k=k):
                return F.conv2d(x, w, b, stride=s, padding=k // 2)

            forward = per_call(lambda: conv(x, w, b).sum().item(), repeats, device)
            inp = per_call(grad_time(lambda x: conv(x, w, b), [x]), repeats, device)
            wgt = per_call(grad_time(lambda w, b: conv(x, w, b), [w, b]), repeats, device)
            parts = [["forward", forward], ["input gradient", max(inp - forward, 0.0)],
                     ["weight gradient", max(wgt - forward, 0.0)]]
        elif kind == "Linear":
            x = torch.randn(n, p["inputs"], device=device)
            w = torch.randn(p["outputs"], p["inputs"], device=device)
            b = torch.randn(p["outputs"], device=device)
            forward = per_call(lambda: F.linear(x, w, b).sum().item(), repeats, device)
            both = per_call(grad_time(F.linear, [x, w, b]), repeats, device)
            parts = [["forward", forward], ["backward", max(both - forward, 0.0)]]
        elif kind == "GroupNorm":
            c, r = p["channels"], p["resolution"]
            norm = torch.nn.GroupNorm(groups, c, eps=eps).to(device)
            act = F.silu if p["silu"] else (lambda y: y)
            x = torch.randn(n, c, r, r, device=device)
            forward = per_call(lambda: act(norm(x)).sum().item(), repeats, device)
            both = per_call(grad_time(lambda x: act(norm(x)), [x]), repeats, device)
            parts = [["forward", forward], ["backward", max(both - forward, 0.0)]]
        elif kind == "Attention":
            c, r, heads = p["channels"], p["resolution"], p["heads"]
            # The block UNet2DModel builds for AttnDownBlock2D / AttnUpBlock2D.
            block = Attention(
                c, heads=heads, dim_head=c // heads, rescale_output_factor=1.0, eps=eps,
                norm_num_groups=groups, residual_connection=True, bias=True, upcast_softmax=True,
                _from_deprecated_attn_block=True,
            ).to(device)
            x = torch.randn(n, c, r, r, device=device)
            forward = per_call(lambda: block(x).sum().item(), repeats, device)
            both = per_call(grad_time(block, [x]), repeats, device)
            parts = [["forward", forward], ["backward", max(both - forward, 0.0)]]
        else:
            raise SystemExit(f"unknown layer kind {kind!r} in {spec!r}")
        out.append(parts)
    return out


if __name__ == "__main__":
    main()

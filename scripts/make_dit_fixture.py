#!/usr/bin/env python3
"""Write the DiT fixture for hayate's DiT test: a small model built by the official DiT code.

The fixture is a class-conditional DiT (8x8 RGB images, patch 2, width 16, 2 blocks, 2 heads,
4 classes plus the classifier-free-guidance row, learn_sigma=False) built by
`models.DiT` from github.com/facebookresearch/DiT, with every tensor (the zero-initialised
adaLN and output layers included) redrawn from a seeded generator so that every path shows in
the output, saved as its state_dict (`weights.safetensors`, `pos_embed` included) with an input
batch and the model's output on it (`io.safetensors`: x, t as fractional timesteps, labels as
floats, the last label being the "no label" row; out).

hayate does not copy DiT's code; give this script a checkout of it:
  git clone https://github.com/facebookresearch/DiT /tmp/DiT
  python scripts/make_dit_fixture.py /tmp/DiT crates/hayate-eval/fixtures/dit
Needs: torch (written with torch 2.15), timm (DiT imports its PatchEmbed, Attention, Mlp),
safetensors, numpy. Nothing is downloaded.
"""
import os
import sys

import torch
from safetensors.torch import save_file

CONFIG = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=16, depth=2, num_heads=2,
              mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=4, learn_sigma=False)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    dit_repo, out = sys.argv[1], sys.argv[2]
    sys.path.insert(0, dit_repo)
    from models import DiT  # noqa: E402 (the checkout given on the command line)

    torch.manual_seed(0)
    model = DiT(**CONFIG).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "pos_embed":
                continue  # fixed, not learned: hayate computes it
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    t = torch.tensor([3.5, 720.25])
    labels = torch.tensor([1, CONFIG["num_classes"]])
    with torch.no_grad():
        y = model(x, t, labels)
    os.makedirs(out, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out, "weights.safetensors"))
    save_file(
        {"x": x, "t": t, "labels": labels.float(), "out": y.contiguous()},
        os.path.join(out, "io.safetensors"),
    )
    params = sum(p.numel() for n, p in model.named_parameters() if n != "pos_embed")
    print(f"wrote {out}: {len(state)} tensors, {params} parameters, |out| max {y.abs().max():.4f}")
    # Parameter counts of the presets (learn_sigma=False, pos_embed left out), for hayate's tests.
    for name, kwargs in {
        "dit_s2_cifar10 + 10 classes": dict(input_size=32, patch_size=2, in_channels=3,
                                            hidden_size=384, depth=12, num_heads=6),
        "dit_tiny + 10 classes": dict(input_size=32, patch_size=2, in_channels=3, hidden_size=64,
                                      depth=4, num_heads=4),
    }.items():
        m = DiT(**kwargs, num_classes=10, class_dropout_prob=0.1, learn_sigma=False)
        n = sum(p.numel() for k, p in m.named_parameters() if k != "pos_embed")
        print(f"{name}: {n} parameters ({n - 11 * kwargs['hidden_size']} without the labels)")


if __name__ == "__main__":
    main()

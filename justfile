# hayate's everyday commands. Extra arguments pass through to the `hayate` binary.

# Train the DDPM recipe on CIFAR-10 (downloads the data into ~/.cache/hayate if absent).
train-cifar *ARGS:
    cargo run --release -p hayate -- train --config experiments/cifar10-baseline.toml {{ARGS}}

# Train the tiny model: the whole pipeline in minutes on a CPU.
train-tiny *ARGS:
    cargo run --release -p hayate -- train --config experiments/cifar10-tiny-baseline.toml {{ARGS}}

# Train ADM's class-conditional ImageNet 128x128 model (422M parameters) on a GPU box:
# just train-imagenet --data-dir ~/data/imagenet/train   (the folder is prepared once into the
# cache; a file from `just prepare-imagenet` works too). 64x64: experiments/imagenet64-baseline.toml.
train-imagenet *ARGS:
    cargo run --release -p hayate -- train --config experiments/imagenet128-baseline.toml {{ARGS}}

# Pack an ImageNet-style folder into a prepared file: just prepare-imagenet ~/data/imagenet/train 128 imagenet128.hds
prepare-imagenet SRC SIZE OUT:
    cargo run --release -p hayate -- prepare imagenet --src {{SRC}} --size {{SIZE}} --out {{OUT}}

# Write a grid of samples from a run folder or checkpoint: just sample --checkpoint runs/cifar10-baseline
sample *ARGS:
    cargo run --release -p hayate -- sample {{ARGS}}

# Print parameters and FLOPs of a config.
info CONFIG="experiments/cifar10-baseline.toml":
    cargo run --release -p hayate -- info --config {{CONFIG}}

# Training and sampling throughput beside PyTorch: just bench-throughput ddpm_cifar10 --batch 8 --backend cpu
bench-throughput PRESET="ddpm_cifar10" *ARGS:
    cargo run --release -p hayate -- bench throughput --preset {{PRESET}} {{ARGS}}

# The convergence benchmark: each method trained over two seeds on CIFAR-10 at 16x16, scored at
# fixed steps (about 1.5 hours on a 2-core CPU): just bench-convergence --backend cpu
bench-convergence CONFIG="experiments/bench-convergence.toml" *ARGS:
    cargo run --release -p hayate -- bench convergence --config {{CONFIG}} {{ARGS}}

# The long-horizon convergence benchmark, a part at a time over days (runs kept in the cache and
# resumed): just bench-long --backend cpu --method baseline --seed 0   (no --method: every part)
bench-long *ARGS:
    cargo run --release -p hayate -- bench convergence --config experiments/bench-long.toml {{ARGS}}

# Retrain the benchmark's feature network (benches/cifar10-16-features.hfn, about 5 minutes on a CPU).
bench-feature-net *ARGS:
    cargo run --release -p hayate -- bench feature-net {{ARGS}}

# Run every test (CPU backend; the WGPU test runs where a WGPU adapter exists).
test *ARGS:
    cargo test --workspace {{ARGS}}

# Chart a config's schedules (p_k(t), w(t), beta1(k), lr(k)) before training with it.
schedule-plot CONFIG OUT="plots":
    cargo run --release -p hayate -- schedule plot --config {{CONFIG}} --out {{OUT}}

# Redraw a run's charts into RUN/plots: just plot runs/cifar10-baseline
plot RUN:
    cargo run --release -p hayate -- plot {{RUN}}

# FID of a run's newest checkpoint against CIFAR-10 train: just fid runs/cifar10-baseline --n 10000
fid RUN *ARGS:
    cargo run --release -p hayate -- eval fid --checkpoint {{RUN}} {{ARGS}}

# The consistency phenomenon: train two tiny models that differ in seed, a third that differs
# in width, a tiny DiT (across architectures) and the first two again predicting x_0 and v (the
# prediction target), then compare pairs of them from shared noise: pixel agreement, and the
# reproducibility score in Inception features (times in docs/results.md).
consistency *ARGS:
    for m in a b wide dit x0-a x0-b v-a v-b; do cargo run --release -p hayate -- train --config experiments/consistency-$m.toml --out runs/consistency-$m {{ARGS}}; done
    cargo run --release -p hayate -- consistency --a runs/consistency-a --b runs/consistency-b --out runs/consistency/seed
    cargo run --release -p hayate -- consistency --a runs/consistency-a --b runs/consistency-wide --out runs/consistency/width
    cargo run --release -p hayate -- consistency --a runs/consistency-a --b runs/consistency-dit --out runs/consistency/architecture
    cargo run --release -p hayate -- consistency --a runs/consistency-x0-a --b runs/consistency-x0-b --out runs/consistency/x0-seed
    cargo run --release -p hayate -- consistency --a runs/consistency-v-a --b runs/consistency-v-b --out runs/consistency/v-seed
    cargo run --release -p hayate -- consistency --a runs/consistency-a --b runs/consistency-x0-b --out runs/consistency/eps-x0
    cargo run --release -p hayate -- consistency --a runs/consistency-a --b runs/consistency-v-b --out runs/consistency/eps-v
    cargo run --release -p hayate -- consistency --a runs/consistency-x0-a --b runs/consistency-v-b --out runs/consistency/x0-v

# hayate's everyday commands. Extra arguments pass through to the `hayate` binary.

# Train the DDPM recipe on CIFAR-10 (downloads the data into ~/.cache/hayate if absent).
train-cifar *ARGS:
    cargo run --release -p hayate -- train --config experiments/cifar10-baseline.toml {{ARGS}}

# Train the tiny model: the whole pipeline in minutes on a CPU.
train-tiny *ARGS:
    cargo run --release -p hayate -- train --config experiments/cifar10-tiny-baseline.toml {{ARGS}}

# ImageNet is not built yet (see the ImageNet issue); this says so instead of failing obscurely.
train-imagenet *ARGS:
    @echo "ImageNet training is not built yet: the folder loader and ADM presets are still to come." >&2
    @exit 1

# Write a grid of samples from a run folder or checkpoint: just sample --checkpoint runs/cifar10-baseline
sample *ARGS:
    cargo run --release -p hayate -- sample {{ARGS}}

# Print parameters and FLOPs of a config.
info CONFIG="experiments/cifar10-baseline.toml":
    cargo run --release -p hayate -- info --config {{CONFIG}}

# Run every test (CPU backend; the WGPU test runs where a WGPU adapter exists).
test *ARGS:
    cargo test --workspace {{ARGS}}

# Chart a config's schedules (p_k(t), w(t), beta1(k), lr(k)) before training with it.
schedule-plot CONFIG OUT="plots":
    cargo run --release -p hayate -- schedule plot --config {{CONFIG}} --out {{OUT}}

# Redraw a run's charts into RUN/plots: just plot runs/cifar10-baseline
plot RUN:
    cargo run --release -p hayate -- plot {{RUN}}

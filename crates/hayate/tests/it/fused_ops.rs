//! hayate's fused CPU ops (GroupNorm with SiLU, the im2col convolution) against Burn's composed
//! ops over a whole training run, through the real binary so the switch stays in one process:
//! the same run with `--composed-ops` logs the same losses.

use crate::common;

use common::{hayate_train, metrics};

#[test]
fn a_run_on_the_fused_ops_logs_the_losses_of_one_on_burns_ops() {
    let Some(data) = common::shared_cifar10() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::tiny_config(24, 24);
    config.train.log_every = 1;
    config.sampling.grid_images = 1;
    config.sampling.ddim_steps = 1;
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    let losses = |composed: bool| {
        let run = dir.path().join(if composed { "composed" } else { "fused" });
        let mut command = hayate_train(&path, &run, &data, false);
        if composed {
            command.arg("--composed-ops");
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        metrics(&run, "log")
            .iter()
            .map(|l| l["loss"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    let (fused, composed) = (losses(false), losses(true));
    assert_eq!(fused.len(), 24);
    assert_eq!(fused.len(), composed.len());
    // The two paths round differently (by about 1e-7 of each value); Adam carries that through
    // 24 steps, still far below what a wrong gradient would move.
    for (step, (a, b)) in fused.iter().zip(&composed).enumerate() {
        let error = (a - b).abs() / b.abs();
        assert!(
            error < 1e-4,
            "step {}: loss {a} fused, {b} composed ({error:e} relative)",
            step + 1
        );
    }
    // They do differ in the last bits: the switch changed the path.
    assert_ne!(
        fused, composed,
        "the fused and composed runs are bit-identical"
    );
}

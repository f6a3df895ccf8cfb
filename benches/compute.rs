//! Compute-option benchmark (`cargo bench --bench compute`): one ResNet-50 training step
//! (zero_grad, forward, CE + triplet, backward, SGD as `agd train` runs it) at 256×128 on
//! the CPU under each of `agd train`'s compute options — NCHW float32 (the reference's),
//! `--memory-format nhwc`, `--amp`, both — alternating, with the ratio to NCHW float32.
//! It decides the CPU's default layout (`LoopPlan::compute`); on a GPU, scripts/gpu-check
//! measures the same options.
//!
//! `AGD_BENCH_STEPS`: timed steps per option (default 3; the median is reported), after one
//! warm-up step each. `AGD_BENCH_BATCH`: batch size (default 16, 4 identities × 4).

#[allow(dead_code)] // this bench uses only the timing helpers
mod common;

use agd::loss::BaseLoss;
use agd::model::{Compute, ReidModel};
use agd::train::optimizer::{Optimizer, OptimizerKind};
use anyhow::Result;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const OPTIONS: [(&str, Compute); 4] = [
    (
        "NCHW float32 (reference)",
        Compute {
            amp: false,
            nhwc: false,
        },
    ),
    (
        "--memory-format nhwc",
        Compute {
            amp: false,
            nhwc: true,
        },
    ),
    (
        "--amp (bfloat16 trunk)",
        Compute {
            amp: true,
            nhwc: false,
        },
    ),
    (
        "--amp --memory-format nhwc",
        Compute {
            amp: true,
            nhwc: true,
        },
    ),
];

struct Setup {
    model: ReidModel,
    opt: Optimizer,
}

impl Setup {
    fn new(compute: Compute) -> Result<Self> {
        tch::manual_seed(0);
        let cfg = common::resnet50(751);
        let mut model = ReidModel::new(cfg, Device::Cpu)?;
        model.compute = compute;
        let mut opt = Optimizer::for_device(&model, OptimizerKind::Sgd);
        opt.set_lr(1e-4);
        Ok(Self { model, opt })
    }

    fn step(&mut self, x: &Tensor, pids: &Tensor) -> f64 {
        let t = Instant::now();
        self.opt.zero_grad();
        let out = self.model.forward(x, true);
        BaseLoss::new(&out.logits, &out.global, pids)
            .total()
            .backward();
        self.opt.step().unwrap();
        t.elapsed().as_secs_f64()
    }
}

fn main() -> Result<()> {
    agd::alloc::retain_freed_memory();
    let steps = common::env_usize("AGD_BENCH_STEPS", 3).max(1);
    let batch = common::env_usize("AGD_BENCH_BATCH", 16).max(4) as i64 / 4 * 4;
    println!(
        "ResNet-50 training step, batch {batch} at 256×128, CPU, {} threads: 1 warm-up + {steps} \
         timed steps per option, alternating",
        tch::get_num_threads()
    );
    common::print_load();
    let x = Tensor::randn([batch, 3, 256, 128], (Kind::Float, Device::Cpu));
    let pids = Tensor::arange(batch / 4, (Kind::Int64, Device::Cpu))
        .repeat_interleave_self_int(4, 0, None);
    let mut setups = OPTIONS
        .iter()
        .map(|(_, c)| Setup::new(*c))
        .collect::<Result<Vec<_>>>()?;
    let mut times = vec![Vec::new(); OPTIONS.len()];
    for round in 0..=steps {
        for (i, s) in setups.iter_mut().enumerate() {
            let t = s.step(&x, &pids);
            if round > 0 {
                times[i].push(t);
            }
        }
    }
    let medians: Vec<f64> = times.into_iter().map(common::median).collect();
    let rows = OPTIONS.iter().zip(&medians).map(|((name, _), &m)| {
        vec![
            name.to_string(),
            format!("{m:.2} s"),
            format!("{:.1}", batch as f64 / m),
            format!("{:.2}×", medians[0] / m),
        ]
    });
    println!(
        "{}",
        agd::report::table(
            [
                "option",
                "step (median)",
                "images/s",
                "speed vs NCHW float32"
            ],
            rows
        )
    );
    Ok(())
}

//! The reference's own `checkpoint.pth.tar` (torch.save of {backbone: state_dict,
//! classifier: state_dict, epoch}) loads into agd's model, tensor for tensor. The file is
//! written by PyTorch itself when a Python with torch is at hand — always the case under
//! `make test`, which installs one — from a model agd initialised. Without such a Python
//! the test fails rather than passing unrun.

use agd::model::checkpoint::{resolve, Checkpoint};
use agd::model::{Depth, ModelConfig, Pooling, ReidModel};
use std::path::PathBuf;
use std::process::Command;
use tch::{Device, Kind, Tensor};

/// A Python that can import torch: the virtualenv `make` set up, else `python3`.
fn python_with_torch() -> Option<PathBuf> {
    let venv = std::env::var_os("VIRTUAL_ENV").map(|v| PathBuf::from(v).join("bin/python"));
    venv.into_iter()
        .chain([PathBuf::from("python3")])
        .find(|py| {
            Command::new(py)
                .args(["-c", "import torch"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

const WRITE_REFERENCE: &str = r#"
import json, sys, collections, torch
src, dst = sys.argv[1], sys.argv[2]
manifest = json.load(open(f"{src}/manifest.json"))
parts = {"backbone": collections.OrderedDict(), "classifier": collections.OrderedDict()}
for i, t in enumerate(manifest):
    raw = open(f"{src}/{i}.bin", "rb").read()
    dtype = {"f32": torch.float32, "i64": torch.int64}[t["dtype"]]
    value = torch.frombuffer(bytearray(raw), dtype=dtype).reshape(t["shape"]).clone()
    part, name = t["name"].split(".", 1)
    parts[part][name] = value
torch.save({"backbone": parts["backbone"], "classifier": parts["classifier"], "epoch": 5}, dst)
"#;

#[test]
fn reference_checkpoint_pth_tar_loads_into_the_model() {
    // `make test` always has the cached torch venv: a missing Python is a broken setup,
    // and a test that passed without running would hide it.
    let python = python_with_torch().expect(
        "no Python that can import torch (VIRTUAL_ENV/bin/python or python3): run the tests \
         through `make test` or scripts/with-libtorch, which install one",
    );
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ModelConfig {
        depth: Depth::R34,
        last_stride: 2,
        pooling: Pooling::Avg,
        embedding: 512,
        classes: 11,
    };
    tch::manual_seed(7);
    let original = ReidModel::new(cfg, Device::Cpu).unwrap();
    // The reference trains the neck's bias (docs/method.md §3): its checkpoints hold a non-zero one.
    let trained_bias = Tensor::randn([512], (Kind::Float, Device::Cpu));
    tch::no_grad(|| {
        original
            .params
            .get("backbone.bn.bias")
            .unwrap()
            .shallow_clone()
            .copy_(&trained_bias)
    });

    // Hand PyTorch the raw tensors; it writes the reference's file format.
    let raw = tmp.path().join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    let mut manifest = Vec::new();
    for (i, (name, t)) in original.state().iter().enumerate() {
        let dtype = if t.kind() == tch::Kind::Int64 {
            "i64"
        } else {
            "f32"
        };
        let mut bytes = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
        t.copy_data_u8(&mut bytes, t.numel());
        std::fs::write(raw.join(format!("{i}.bin")), bytes).unwrap();
        manifest.push(serde_json::json!({"name": name, "shape": t.size(), "dtype": dtype}));
    }
    std::fs::write(
        raw.join("manifest.json"),
        serde_json::to_string(&manifest).unwrap(),
    )
    .unwrap();
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let out = Command::new(&python)
        .args(["-c", WRITE_REFERENCE])
        .arg(&raw)
        .arg(logs.join("checkpoint.pth.tar"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A logs folder stands for its checkpoint, as in the reference README.
    let path = resolve(&logs, agd::error::Setting::Previous).unwrap();
    assert!(path.ends_with("checkpoint.pth.tar"));
    let ck = Checkpoint::load(&path).unwrap();
    assert_eq!(
        ck.epoch, 4,
        "the reference stores the next epoch to run (5)"
    );
    assert_eq!(ck.classes().unwrap(), 11);
    assert_eq!(ck.depth(), Some(Depth::R34));
    tch::manual_seed(8);
    let mut loaded = ReidModel::new(cfg, Device::Cpu).unwrap();
    loaded.load_checkpoint(&ck).unwrap();
    let bias = loaded.params.get("backbone.bn.bias").unwrap();
    assert!(
        bias.equal(&trained_bias) && bias.requires_grad(),
        "the trained neck bias loads, and keeps training"
    );
    for ((name, a), (_, b)) in original.state().iter().zip(loaded.state().iter()) {
        assert!(
            a.equal(b),
            "{name} differs after the round trip through PyTorch"
        );
    }
    // The same file against a model of another shape: a clear error.
    let wrong = ModelConfig { classes: 12, ..cfg };
    let err = ReidModel::new(wrong, Device::Cpu)
        .unwrap()
        .load_checkpoint(&ck)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("checkpoint.pth.tar") && err.contains("11 classes"),
        "{err}"
    );
}

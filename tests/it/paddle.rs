//! The paddle.save reader: real files written by PaddlePaddle 2.6.2 and 3.3.1
//! (tests/data/make_paddle_files.py made them; expected_paddle.json holds what `paddle.load`
//! saw in them), full models in the PaddlePaddle reproduction's checkpoint format written
//! here, and files it must refuse.

use agd::model::checkpoint::{resolve, Checkpoint};
use agd::model::pth::{PaddleFile, Scalar};
use agd::model::{Depth, ModelConfig, Pooling, ReidModel};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use super::util::agd_output;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn load(path: &Path) -> PaddleFile {
    PaddleFile::load(path).unwrap_or_else(|e| panic!("{e:#}"))
}

fn load_error(path: &Path) -> String {
    match PaddleFile::load(path) {
        Ok(f) => panic!(
            "{} loaded, with {} tensors",
            path.display(),
            f.tensors.len()
        ),
        Err(e) => format!("{e:#}"),
    }
}

fn checkpoint_error(path: &Path) -> String {
    match Checkpoint::load(path).and_then(|ck| ck.classes()) {
        Ok(_) => panic!("{} loaded as a checkpoint", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn expected() -> serde_json::Map<String, Json> {
    let text = std::fs::read_to_string(data("expected_paddle.json")).unwrap();
    serde_json::from_str::<Json>(&text)
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

fn floats(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

fn ints(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.to_kind(Kind::Int64).reshape([-1])).unwrap()
}

#[test]
fn files_of_both_paddle_generations_read_as_paddle_load_sees_them() {
    let all = expected();
    // Both generations, both pickle protocols Paddle writes by default or on request.
    let mut generations = std::collections::BTreeSet::new();
    for (file, want) in &all {
        let f = load(&data(file));
        generations.insert(want["paddle"].as_str().unwrap()[..1].to_owned());
        let want_tensors = want["tensors"].as_array().unwrap();
        let names: Vec<&str> = f.tensors.iter().map(|(n, _)| n.as_str()).collect();
        let want_names: Vec<&str> = want_tensors
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, want_names, "{file}: names and order");
        for (w, (name, t)) in want_tensors.iter().zip(&f.tensors) {
            let kind = match w["dtype"].as_str().unwrap() {
                "float32" => Kind::Float,
                "float64" => Kind::Double,
                "int64" => Kind::Int64,
                other => panic!("{other} in expected_paddle.json"),
            };
            assert_eq!(t.kind(), kind, "{file}: {name} dtype");
            let shape: Vec<i64> = w["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_i64().unwrap())
                .collect();
            assert_eq!(t.size(), shape, "{file}: {name} shape");
            assert!(t.is_contiguous() && !t.requires_grad(), "{file}: {name}");
            let values = w["values"].as_array().unwrap();
            if kind == Kind::Int64 {
                let want: Vec<i64> = values.iter().map(|v| v.as_i64().unwrap()).collect();
                assert_eq!(ints(t), want, "{file}: {name} values");
            } else {
                let want: Vec<f64> = values
                    .iter()
                    .map(|v| v.as_str().unwrap().parse().unwrap())
                    .collect();
                assert_eq!(floats(t), want, "{file}: {name} values");
            }
        }
        // Paddle's StructuredToParameterName@@ is bookkeeping, not a scalar of the file.
        let scalars: Vec<(&String, i64)> = want["scalars"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k, v.as_i64().unwrap()))
            .collect();
        let got: Vec<(&String, i64)> = f
            .scalars
            .iter()
            .map(|(k, v)| match v {
                Scalar::Int(i) => (k, *i),
                other => panic!("{file}: scalar {k} = {other:?}"),
            })
            .collect();
        assert_eq!(got, scalars, "{file}: scalars");
    }
    assert_eq!(generations.into_iter().collect::<Vec<_>>(), ["2", "3"]);
    assert_eq!(
        all.values()
            .map(|w| w["numpy_module"].as_str().unwrap())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        2,
        "numpy.core and numpy._core"
    );
}

#[test]
fn the_reproductions_checkpoint_is_a_checkpoint_under_torch_names() {
    for file in [
        "checkpoint_paddle2_protocol4.pdparams",
        "checkpoint_paddle2_protocol2.pdparams",
        "checkpoint_paddle3_protocol4.pdparams",
        "checkpoint_paddle3_protocol2.pdparams",
    ] {
        let ck = Checkpoint::load(&data(file)).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            ck.epoch, 6,
            "{file}: the saved epoch (7) is the next one to run"
        );
        assert_eq!(ck.classes().unwrap(), 5, "{file}");
        let mean = &ck.tensors["backbone.base.bn1.running_mean"];
        assert_eq!(floats(mean), [0.0, 0.125, 0.25, 0.375], "{file}");
        assert_eq!(floats(&ck.tensors["backbone.bn.running_var"]), [2.5; 8]);
        assert!(!ck
            .tensors
            .keys()
            .any(|k| k.ends_with("._mean") || k.ends_with("._variance")));
        let conv = &ck.tensors["backbone.base.conv1.weight"];
        assert_eq!(conv.size(), [4, 3, 3, 3]);
        let arange: Vec<f64> = (0..108).map(|i| f64::from(i as f32 / 8.0)).collect();
        assert_eq!(floats(conv), arange, "{file}: OIHW as saved");
        assert_eq!(ck.tensors["classifier.W"].size(), [5, 8]);
    }
}

/// A pickle written the way paddle.save writes one (protocol 4, no memo: the reader needs
/// none), so that tests can hold full models without committing 85 MB.
struct Pickle {
    out: Vec<u8>,
    /// `numpy.core.multiarray` (Paddle 2.x) or `numpy._core.multiarray` (3.x).
    numpy: &'static str,
}

impl Pickle {
    fn new(numpy: &'static str) -> Self {
        Pickle {
            out: vec![0x80, 4],
            numpy,
        }
    }

    fn op(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.extend_from_slice(bytes);
        self
    }

    fn str(&mut self, s: &str) -> &mut Self {
        self.out.push(b'X');
        self.out.extend((s.len() as u32).to_le_bytes());
        self.op(s.as_bytes())
    }

    fn int(&mut self, i: i32) -> &mut Self {
        self.out.push(b'J');
        self.op(&i.to_le_bytes())
    }

    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.str(module).str(name).op(&[0x93])
    }

    /// `numpy.dtype(code, False, True)` with its state (byte order `order`).
    fn dtype(&mut self, code: &str, order: &str) -> &mut Self {
        self.global("numpy", "dtype")
            .str(code)
            .op(&[0x89, 0x88, 0x87, b'R', b'('])
            .int(3)
            .str(order)
            .op(b"NNN")
            .int(-1)
            .int(-1)
            .int(0)
            .op(b"tb")
    }

    /// An ndarray with raw `data` (already in `order`).
    fn array_bytes(&mut self, code: &str, order: &str, shape: &[i64], data: &[u8]) -> &mut Self {
        let numpy = self.numpy;
        self.global(numpy, "_reconstruct")
            .global("numpy", "ndarray")
            .int(0)
            .op(&[0x85, b'C', 1, b'b', 0x87, b'R', b'('])
            .int(1)
            .op(b"(");
        for &d in shape {
            self.int(d as i32);
        }
        self.op(b"t").dtype(code, order).op(&[0x89, b'B']);
        self.out.extend((data.len() as u32).to_le_bytes());
        self.op(data).op(b"tb")
    }

    fn array(&mut self, t: &Tensor) -> &mut Self {
        let code = match t.kind() {
            Kind::Float => "f4",
            Kind::Double => "f8",
            Kind::Int64 => "i8",
            other => panic!("{other:?}"),
        };
        let t = t.contiguous();
        let mut bytes = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
        t.copy_data_u8(&mut bytes, t.numel());
        self.array_bytes(code, "<", &t.size(), &bytes)
    }

    /// A tensor as paddle.save pickles one inside a nested dict:
    /// `tuple(((param_name, ndarray),))`.
    fn paddle_tensor(&mut self, param: &str, t: &Tensor) -> &mut Self {
        self.global("builtins", "tuple")
            .str(param)
            .array(t)
            .op(&[0x86, 0x85, b'R'])
    }

    fn finish(&mut self) -> Vec<u8> {
        self.op(b".");
        std::mem::take(&mut self.out)
    }
}

/// agd's state name → the reproduction's (`running_mean` → `_mean`); `None` for what Paddle's
/// BatchNorm does not have.
fn paddle_name(name: &str) -> Option<String> {
    if name.ends_with("num_batches_tracked") {
        return None;
    }
    Some(
        name.replace(".running_mean", "._mean")
            .replace(".running_var", "._variance"),
    )
}

/// The reproduction's checkpoint of `model`: `{'backbone': …, 'classifier': …, 'epoch': …}`,
/// tensors as Paddle 3.x pickles them nested; with `flat`, as Paddle 2.x pickles a state
/// dict (`name → ndarray`) with a `StructuredToParameterName@@` entry.
fn reproduction_checkpoint(
    model: &ReidModel,
    epoch: i32,
    numpy: &'static str,
    flat: bool,
) -> Vec<u8> {
    let mut p = Pickle::new(numpy);
    p.op(b"}(");
    for part in ["backbone", "classifier"] {
        p.str(part).op(b"}(");
        for (i, (name, t)) in model.state().iter().enumerate() {
            let Some(rest) = name.strip_prefix(&format!("{part}.")) else {
                continue;
            };
            let Some(rest) = paddle_name(rest) else {
                continue;
            };
            p.str(&rest);
            if flat {
                p.array(t);
            } else {
                p.paddle_tensor(&format!("generated_tensor_{i}"), t);
            }
        }
        if flat {
            p.str("StructuredToParameterName@@")
                .op(b"}(")
                .str("W")
                .str("create_parameter_0.w_0")
                .op(b"u");
        }
        p.op(b"u");
    }
    p.str("epoch").int(epoch).op(b"u");
    p.finish()
}

fn r34(classes: i64, seed: i64) -> (ModelConfig, ReidModel) {
    let cfg = ModelConfig {
        depth: Depth::R34,
        last_stride: 2,
        pooling: Pooling::Avg,
        embedding: 512,
        classes,
    };
    tch::manual_seed(seed);
    (cfg, ReidModel::new(cfg, Device::Cpu).unwrap())
}

#[test]
fn a_full_reproduction_checkpoint_loads_into_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, original) = r34(11, 7);
    for (numpy, flat) in [
        ("numpy._core.multiarray", false),
        ("numpy.core.multiarray", true),
    ] {
        let logs = tmp.path().join(format!("logs-{flat}"));
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(
            logs.join("checkpoint.pdparams"),
            reproduction_checkpoint(&original, 5, numpy, flat),
        )
        .unwrap();
        // A logs folder stands for its checkpoint.
        let path = resolve(&logs, agd::error::Setting::Previous).unwrap();
        assert!(path.ends_with("checkpoint.pdparams"));
        let ck = Checkpoint::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            ck.epoch, 4,
            "the reproduction stores the next epoch to run (5)"
        );
        assert_eq!((ck.classes().unwrap(), ck.depth()), (11, Some(Depth::R34)));
        let (_, mut loaded) = r34(11, 8);
        loaded.load_checkpoint(&ck).unwrap();
        for ((name, a), (_, b)) in original.state().iter().zip(loaded.state().iter()) {
            assert!(a.equal(b), "{name} differs after the round trip ({numpy})");
        }
        let err = ReidModel::new(ModelConfig { classes: 12, ..cfg }, Device::Cpu)
            .unwrap()
            .load_checkpoint(&ck)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("checkpoint.pdparams") && err.contains("11 classes"),
            "{err}"
        );
    }
}

#[test]
fn agd_evaluate_runs_a_pdparams_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let out = agd_output(&[
        "synth",
        "--data-root",
        &s(&root),
        "--dataset",
        "a",
        "--ids",
        "6",
        "--images-per-id",
        "4",
        "--cameras",
        "3",
        "--seed",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, model) = r34(6, 3);
    let ckpt = tmp.path().join("model.pdparams");
    std::fs::write(
        &ckpt,
        reproduction_checkpoint(&model, 3, "numpy._core.multiarray", false),
    )
    .unwrap();
    let out = agd_output(&[
        "evaluate",
        "-g",
        "cpu",
        "--data-root",
        &s(&root),
        "--dataset",
        "a",
        "--ckpt",
        &s(&ckpt),
        "--height",
        "64",
        "--width",
        "32",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Json = serde_json::from_slice(&out.stdout).unwrap();
    let row = &rows.as_array().unwrap()[0];
    assert_eq!(row["checkpoint"].as_str().unwrap(), s(&ckpt));
    let map = row["mAP"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&map), "{row}");
}

#[test]
fn paddle_imagenet_weights_load_where_torchvision_names_match() {
    // Paddle's model zoo keeps torchvision's names, but for BatchNorm's `_mean` /
    // `_variance`, and stores `fc.weight` as (in, out): the ReID model has no fc.
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut model) = r34(4, 1);
    let conv = Tensor::arange(64 * 3 * 7 * 7, (Kind::Float, Device::Cpu)).reshape([64, 3, 7, 7]);
    let mean = Tensor::arange(64, (Kind::Float, Device::Cpu)) / 64.0;
    let var = Tensor::ones([64], (Kind::Float, Device::Cpu)) * 3.0;
    let mut p = Pickle::new("numpy.core.multiarray");
    p.op(b"}(")
        .str("conv1.weight")
        .array(&conv)
        .str("bn1._mean")
        .array(&mean)
        .str("bn1._variance")
        .array(&var)
        .str("fc.weight")
        .array(&Tensor::zeros([512, 1000], (Kind::Float, Device::Cpu)))
        .op(b"u");
    let path = tmp.path().join("resnet34-333f7ec4.pdparams");
    std::fs::write(&path, p.finish()).unwrap();
    let line = model.load_imagenet(&path).unwrap();
    assert!(line.contains("3 tensors"), "{line}");
    let state: std::collections::HashMap<String, Tensor> = model.state().into_iter().collect();
    assert!(state["backbone.base.conv1.weight"].equal(&conv));
    assert!(state["backbone.base.bn1.running_mean"].equal(&mean));
    assert!(state["backbone.base.bn1.running_var"].equal(&var));
}

#[test]
fn formats_are_told_apart_by_content_not_extension() {
    let tmp = tempfile::tempdir().unwrap();
    // A Paddle file named as the reference's, and the reference's named as Paddle's.
    let as_torch = tmp.path().join("checkpoint.pth.tar");
    std::fs::copy(data("checkpoint_paddle3_protocol4.pdparams"), &as_torch).unwrap();
    assert_eq!(Checkpoint::load(&as_torch).unwrap().classes().unwrap(), 5);
    let as_paddle = tmp.path().join("checkpoint.pdparams");
    std::fs::copy(data("reference_checkpoint.pth.tar"), &as_paddle).unwrap();
    let ck = Checkpoint::load(&as_paddle).unwrap();
    assert_eq!((ck.classes().unwrap(), ck.epoch), (5, 6));
    // torch's legacy pickle is still told apart from a Paddle pickle.
    let msg = checkpoint_error(&data("legacy.pt"));
    assert!(msg.contains("legacy torch.save format"), "{msg}");
    // Neither format: one message naming the file and what was expected.
    let text = tmp.path().join("notes.pdparams");
    std::fs::write(&text, "epoch: 5\n").unwrap();
    assert_eq!(
        checkpoint_error(&text),
        format!(
            "{}: neither safetensors, torch.save nor paddle.save (9 bytes of something else), \
             not a checkpoint",
            text.display()
        )
    );
    assert!(load_error(&text).starts_with(&format!("{}: not a paddle.save file", text.display())));
}

#[test]
fn damaged_paddle_files_fail_cleanly_naming_the_file() {
    // Every truncation and every one-byte change (to the byte's complement) of a real file:
    // each load returns, mostly an error, without panicking, and errors name the file.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("checkpoint.pdparams");
    for file in [
        "checkpoint_paddle3_protocol4.pdparams",
        "checkpoint_paddle2_protocol2.pdparams",
    ] {
        let bytes = std::fs::read(data(file)).unwrap();
        let mut damaged: Vec<Vec<u8>> = (0..bytes.len()).map(|n| bytes[..n].to_vec()).collect();
        for at in 0..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0xff;
            damaged.push(b);
        }
        let mut failed = 0;
        for b in &damaged {
            std::fs::write(&path, b).unwrap();
            if let Err(e) = Checkpoint::load(&path) {
                failed += 1;
                let msg = format!("{e:#}");
                assert!(msg.starts_with(&path.display().to_string()), "{msg}");
            }
        }
        assert!(
            failed > bytes.len(),
            "{file}: only {failed} of {} failed",
            damaged.len()
        );
        // A cut one: where it ends is said.
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let msg = load_error(&path);
        assert!(
            msg.contains("truncated pickle") || msg.contains("without a STOP"),
            "{msg}"
        );
    }
}

#[test]
fn wrong_structures_and_non_array_values_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: Vec<u8>| {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let f32s = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };

    // Not a dict at the top.
    let path = write(
        "list.pdparams",
        Pickle::new("numpy.core.multiarray").op(b"]").finish(),
    );
    let msg = load_error(&path);
    assert!(
        msg.starts_with(&path.display().to_string())
            && msg.contains("holds a list, expected a dict"),
        "{msg}"
    );

    // An array of Python objects where numbers belong.
    let mut p = Pickle::new("numpy._core.multiarray");
    let numpy = p.numpy;
    p.op(b"}(")
        .str("w")
        .global(numpy, "_reconstruct")
        .global("numpy", "ndarray")
        .int(0)
        .op(&[0x85, b'C', 1, b'b', 0x87, b'R', b'('])
        .int(1)
        .op(b"(")
        .int(2)
        .op(b"t")
        .dtype("O", "|")
        .op(&[0x89, b'('])
        .str("a")
        .op(b"Nlt")
        .op(b"bu");
    let msg = load_error(&write("objects.pdparams", p.finish()));
    assert!(
        msg.contains("objects.pdparams") && msg.contains("unsupported numpy dtype 'O'"),
        "{msg}"
    );

    // Data that does not fill the shape.
    let mut p = Pickle::new("numpy._core.multiarray");
    p.op(b"}(")
        .str("w")
        .array_bytes("f4", "<", &[2, 3], &f32s(&[1.0; 5]))
        .op(b"u");
    let msg = load_error(&write("short.pdparams", p.finish()));
    assert!(
        msg.contains("array of shape [2, 3] and dtype f4 holds 20 bytes, expected 24"),
        "{msg}"
    );

    // bfloat16, which Paddle writes as uint16.
    let mut p = Pickle::new("numpy._core.multiarray");
    p.op(b"}(")
        .str("w")
        .array_bytes("u2", "<", &[2], &[0, 0x3f, 0, 0x40])
        .op(b"u");
    let msg = load_error(&write("bf16.pdparams", p.finish()));
    assert!(msg.contains("uint16") && msg.contains("bfloat16"), "{msg}");

    // Big-endian arrays are swapped, not refused.
    let mut p = Pickle::new("numpy._core.multiarray");
    let be: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|x| x.to_be_bytes())
        .collect();
    p.op(b"}(")
        .str("w")
        .array_bytes("f4", ">", &[2], &be)
        .op(b"u");
    let f = load(&write("big.pdparams", p.finish()));
    assert_eq!(floats(f.tensor("w").unwrap()), [1.5, -2.0]);

    // A numpy scalar (an epoch saved as np.int64) is a plain number.
    let mut p = Pickle::new("numpy.core.multiarray");
    let numpy = p.numpy;
    p.op(b"}(")
        .str("epoch")
        .global(numpy, "scalar")
        .dtype("i8", "<")
        .op(&[b'C', 8])
        .op(&5i64.to_le_bytes())
        .op(&[0x86, b'R'])
        .op(b"u");
    let f = load(&write("scalar.pdparams", p.finish()));
    assert_eq!((f.int("epoch"), f.tensors.len()), (Some(5), 0));

    // A classifier that is not an array: the checkpoint says what it lacks.
    let mut p = Pickle::new("numpy._core.multiarray");
    p.op(b"}(")
        .str("backbone")
        .op(b"}(")
        .str("base.conv1.weight")
        .array_bytes("f4", "<", &[1], &f32s(&[1.0]))
        .op(b"u")
        .str("classifier")
        .str("W")
        .str("epoch")
        .int(3)
        .op(b"u");
    let path = write("checkpoint.pdparams", p.finish());
    let msg = checkpoint_error(&path);
    assert!(
        msg.starts_with(&path.display().to_string()) && msg.contains("no classifier.W"),
        "{msg}"
    );

    // An array inside an object of a class the reader does not know is not silently lost.
    let mut p = Pickle::new("numpy._core.multiarray");
    p.op(b"}(")
        .str("opt")
        .global("paddle.optimizer", "State")
        .array_bytes("f4", "<", &[1], &f32s(&[1.0]))
        .op(&[0x85, b'R'])
        .op(b"u");
    let msg = load_error(&write("object.pdparams", p.finish()));
    assert!(
        msg.contains("opt:") && msg.contains("cannot rebuild"),
        "{msg}"
    );
}

/// Issue 36: a reproduction checkpoint whose `epoch` is not a number of epochs is refused,
/// naming it (it was read as epoch 0 without a word, so a resumed run started over).
#[test]
fn an_epoch_that_is_not_a_number_of_epochs_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("checkpoint.pdparams");
    // The checkpoint with `epoch` pickled as the opcodes `epoch`.
    let with_epoch = |epoch: &[u8]| {
        let mut p = Pickle::new("numpy._core.multiarray");
        p.op(b"}(").str("classifier").op(b"}(").str("W");
        p.array(&Tensor::zeros([4, 3], (Kind::Float, Device::Cpu)));
        p.op(b"u").str("epoch").op(epoch).op(b"u");
        std::fs::write(&path, p.finish()).unwrap();
    };
    let int = |i: i32| [&[b'J'][..], &i.to_le_bytes()].concat();
    with_epoch(&int(7));
    assert_eq!(Checkpoint::load(&path).unwrap().epoch, 6);
    // 'two' (SHORT_BINUNICODE), -5 and 10**30 (a LONG1 of 13 bytes).
    let two = [&[0x8c, 3][..], b"two"].concat();
    let mut ten_to_30 = vec![0x8a, 13];
    let mut v = 10u128.pow(30);
    for _ in 0..13 {
        ten_to_30.push((v & 0xff) as u8);
        v >>= 8;
    }
    for (epoch, shown) in [
        (two, "\"two\""),
        (int(-5), "-5"),
        (ten_to_30, "an integer wider than 64 bits"),
    ] {
        with_epoch(&epoch);
        let err = checkpoint_error(&path);
        assert!(
            err.contains(&format!("its `epoch` is {shown}, not a number of epochs")),
            "{err}"
        );
    }
}

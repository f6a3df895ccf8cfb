//! The torch.save reader: real files written by PyTorch (tests/data/make_torch_files.py made
//! them, and expected.json holds what PyTorch itself saw in them), and files it must refuse.

use agd::model::pth::{Scalar, TorchFile};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn load(name: &str) -> TorchFile {
    TorchFile::load(&data(name)).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The message of a load that must fail.
fn load_error(path: &Path) -> String {
    match TorchFile::load(path) {
        Ok(f) => panic!("{} loaded, with tensors {:?}", path.display(), names(&f)),
        Err(e) => format!("{e:#}"),
    }
}

fn names(f: &TorchFile) -> Vec<&str> {
    f.tensors.iter().map(|(n, _)| n.as_str()).collect()
}

fn expected(file: &str) -> Json {
    let text = std::fs::read_to_string(data("expected.json")).unwrap();
    let all: Json = serde_json::from_str(&text).unwrap();
    all[file].clone()
}

fn kind_of(dtype: &str) -> Kind {
    match dtype {
        "float32" => Kind::Float,
        "float64" => Kind::Double,
        "float16" => Kind::Half,
        "bfloat16" => Kind::BFloat16,
        "float8_e4m3fn" => Kind::Float8e4m3fn,
        "int64" => Kind::Int64,
        "int32" => Kind::Int,
        "int16" => Kind::Int16,
        "int8" => Kind::Int8,
        "uint8" => Kind::Uint8,
        "bool" => Kind::Bool,
        other => panic!("dtype {other} in expected.json"),
    }
}

fn floats(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

fn ints(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.to_kind(Kind::Int64).reshape([-1])).unwrap()
}

/// Names (in file order), dtypes, shapes and exact values of every tensor, and every scalar,
/// against what PyTorch reported when it wrote the file.
fn check_against_python(file: &str, loaded: &TorchFile) {
    let want = expected(file);
    let want_tensors = want["tensors"].as_array().unwrap();
    let want_names: Vec<&str> = want_tensors
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names(loaded), want_names, "{file}: tensor names and order");
    for (w, (name, t)) in want_tensors.iter().zip(&loaded.tensors) {
        let kind = kind_of(w["dtype"].as_str().unwrap());
        assert_eq!(t.kind(), kind, "{file}: {name} dtype");
        let shape: Vec<i64> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_i64().unwrap())
            .collect();
        assert_eq!(t.size(), shape, "{file}: {name} shape");
        assert!(t.is_contiguous(), "{file}: {name} is not contiguous");
        assert!(!t.requires_grad(), "{file}: {name} requires grad");
        let values = w["values"].as_array().unwrap();
        match kind {
            Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8 => {
                let want: Vec<i64> = values.iter().map(|v| v.as_i64().unwrap()).collect();
                assert_eq!(ints(t), want, "{file}: {name} values");
            }
            Kind::Bool => {
                let want: Vec<i64> = values.iter().map(|v| v.as_bool().unwrap() as i64).collect();
                assert_eq!(ints(t), want, "{file}: {name} values");
            }
            _ => {
                let want: Vec<f64> = values
                    .iter()
                    .map(|v| v.as_str().unwrap().parse().unwrap())
                    .collect();
                assert_eq!(floats(t), want, "{file}: {name} values");
            }
        }
    }
    let want_scalars = want["scalars"].as_object().unwrap();
    let got: Vec<&String> = loaded.scalars.keys().collect();
    let mut want_keys: Vec<&String> = want_scalars.keys().collect();
    want_keys.sort();
    assert_eq!(got, want_keys, "{file}: scalar names");
    for (name, w) in want_scalars {
        let want = match w {
            Json::Null => Scalar::None,
            Json::Bool(b) => Scalar::Bool(*b),
            Json::String(s) => Scalar::Str(s.clone()),
            Json::Number(n) if n.is_i64() => Scalar::Int(n.as_i64().unwrap()),
            Json::Number(n) => Scalar::Float(n.as_f64().unwrap()),
            other => panic!("{other} in expected.json"),
        };
        assert_eq!(loaded.scalars[name], want, "{file}: scalar {name}");
    }
}

#[test]
fn reference_checkpoint_nests_two_state_dicts_and_the_epoch() {
    let f = load("reference_checkpoint.pth.tar");
    assert_eq!(
        names(&f),
        [
            "backbone.base.conv1.weight",
            "backbone.base.bn1.weight",
            "backbone.base.bn1.bias",
            "backbone.base.bn1.running_mean",
            "backbone.base.bn1.running_var",
            "backbone.base.bn1.num_batches_tracked",
            "backbone.bn.weight",
            "backbone.bn.bias",
            "backbone.bn.running_mean",
            "backbone.bn.running_var",
            "backbone.bn.num_batches_tracked",
            "classifier.W",
        ]
    );
    assert_eq!(f.int("epoch"), Some(7));
    // The state dicts' `_metadata` attribute is not data: only the epoch is a scalar.
    assert_eq!(f.scalars.len(), 1);

    let conv = f.tensor("backbone.base.conv1.weight").unwrap();
    assert_eq!(conv.size(), [4, 3, 3, 3]);
    assert_eq!(conv.kind(), Kind::Float);
    let arange: Vec<f64> = (0..108).map(|i| f64::from(i as f32 / 8.0)).collect();
    assert_eq!(floats(conv), arange);

    let tracked = f.tensor("backbone.base.bn1.num_batches_tracked").unwrap();
    assert_eq!(tracked.size(), Vec::<i64>::new(), "0-dim");
    assert_eq!(tracked.kind(), Kind::Int64);
    assert_eq!(tracked.int64_value(&[]), 123);

    let w = f.tensor("classifier.W").unwrap();
    assert_eq!((w.size(), w.kind()), (vec![5, 8], Kind::Float));
    assert!(f.tensor("W").is_none() && f.int("backbone").is_none());

    check_against_python("reference_checkpoint.pth.tar", &f);
}

#[test]
fn flat_state_dict_keeps_dtypes_views_and_empty_tensors() {
    let f = load("flat_state_dict.pt");
    check_against_python("flat_state_dict.pt", &f);

    // Views of one storage come back with the values of the views, each in memory of its own.
    let base = f.tensor("fc.weight").unwrap();
    let t = f.tensor("fc.weight_t").unwrap();
    assert_eq!(floats(t), floats(&base.tr().contiguous()));
    let window = f.tensor("fc.window").unwrap();
    assert_eq!(floats(window), [8.0, 9.0, 10.0, 14.0, 15.0, 16.0]);
    assert_eq!(
        floats(f.tensor("fc.row").unwrap()),
        [12., 13., 14., 15., 16., 17.]
    );
    assert_ne!(base.data_ptr(), t.data_ptr());
    assert_ne!(base.data_ptr(), window.data_ptr());
    // The same tensor object saved twice stays one tensor, as torch.load gives it.
    assert_eq!(base.data_ptr(), f.tensor("fc.alias").unwrap().data_ptr());

    let expanded = f.tensor("expanded").unwrap();
    assert_eq!(floats(expanded), [1., 2., 3., 1., 2., 3.]);
    let empty = f.tensor("empty").unwrap();
    assert_eq!((empty.size(), empty.numel()), (vec![0, 3], 0));
    assert_eq!(f.tensor("scalar").unwrap().double_value(&[]), 2.5);
    assert_eq!(f.tensor("f16").unwrap().kind(), Kind::Half);
    assert_eq!(floats(f.tensor("f8").unwrap()), [0.5, -2.0, 448.0]);
    assert_eq!(ints(f.tensor("mask").unwrap()), [1, 0, 0, 1, 1]);
    assert_eq!(floats(f.tensor("param").unwrap()), [0.25, 0.75]);
    assert!(f.scalars.is_empty());
}

#[test]
fn training_script_extras_flatten_or_are_skipped() {
    // Protocol 4 (FRAME, MEMOIZE, STACK_GLOBAL), an argparse.Namespace, int keys, lists, None,
    // and a torch.device / torch.Size, which have nothing to name and are skipped.
    let f = load("misc_checkpoint.pt");
    check_against_python("misc_checkpoint.pt", &f);
    assert_eq!(f.scalars["args.arch"], Scalar::Str("resnet50".into()));
    assert_eq!(f.scalars["best_mAP"], Scalar::Float(0.75));
    assert_eq!(f.int("history.1"), Some(-2));
    assert!(f.tensor("optimizer.state.0.momentum_buffer").is_some());
    assert!(!f
        .scalars
        .keys()
        .any(|k| k.starts_with("device") || k.starts_with("size")));
}

#[test]
fn a_tensor_the_reader_cannot_rebuild_fails_the_load() {
    let path = data("sparse_tensor.pt");
    let msg = load_error(&path);
    assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
    assert!(msg.contains("sparse:"), "{msg}");
    assert!(msg.contains("_rebuild_sparse_tensor"), "{msg}");
    assert!(msg.contains("cannot rebuild"), "{msg}");
}

#[test]
fn legacy_format_is_refused_with_the_resave_command() {
    let path = data("legacy.pt");
    let p = path.to_string_lossy();
    let msg = load_error(&path);
    assert!(
        msg.starts_with(&format!("{p}: legacy torch.save format")),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("torch.save(torch.load('{p}'), '{p}')")),
        "{msg}"
    );
}

#[test]
fn other_files_are_not_torch_files() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        (
            "random.bin",
            (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
        ("empty.pt", Vec::new()),
        ("text.pt", b"backbone: resnet50\n".to_vec()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let msg = load_error(&path);
        assert_eq!(msg, format!("{}: not a torch.save file", path.display()));
    }
    let missing = dir.path().join("absent.pth");
    assert!(load_error(&missing).starts_with(&format!("{}: cannot open", missing.display())));
}

#[test]
fn truncated_zip_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(data("reference_checkpoint.pth.tar")).unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 10, 30] {
        let path = dir.path().join("checkpoint.pth.tar");
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let msg = load_error(&path);
        assert!(
            msg.starts_with(&format!("{}: corrupt or truncated zip", path.display())),
            "{msg}"
        );
    }
}

#[test]
fn corrupt_storage_bytes_name_the_entry() {
    // Flip bytes inside the first storage: the zip's CRC check catches it.
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(data("flat_state_dict.pt")).unwrap();
    // Storage 0 is `fc.weight`, arange(24) as little-endian float32.
    let needle: Vec<u8> = [1f32, 2., 3.]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    bytes[at] ^= 0xff;
    let path = dir.path().join("flat_state_dict.pt");
    std::fs::write(&path, &bytes).unwrap();
    let msg = load_error(&path);
    assert!(msg.starts_with(&path.display().to_string()), "{msg}");
    assert!(msg.contains("'flat_state_dict/data/0'"), "{msg}");
}

#[test]
fn missing_storage_entry_is_named() {
    let path = data("missing_storage.pt");
    let msg = load_error(&path);
    assert!(msg.starts_with(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains("missing entry 'missing_storage/data/1'"),
        "{msg}"
    );
}

#[test]
fn big_endian_files_are_refused() {
    let msg = load_error(&data("big_endian.pt"));
    assert!(msg.contains("big-endian"), "{msg}");
}

#[test]
fn unsupported_opcodes_are_named_with_their_offset() {
    // A protocol-0 pickle: `(dp0\n…`, whose PUT at byte 2 torch never writes.
    let msg = load_error(&data("bad_opcode.pt"));
    assert!(
        msg.contains("data.pkl: opcode PUT (0x70 'p') at byte 2"),
        "{msg}"
    );
    assert!(msg.contains("unsupported pickle opcode"), "{msg}");
}

/// The entries of a torch.save archive, to write back with an altered pickle.
fn entries(src: &Path) -> Vec<(String, Vec<u8>)> {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
    (0..zip.len())
        .map(|i| {
            let mut f = zip.by_index(i).unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut data).unwrap();
            (f.name().to_owned(), data)
        })
        .collect()
}

fn write_with_pickle(entries: &[(String, Vec<u8>)], pickle: &[u8], out: &Path) {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(out).unwrap());
    let options =
        zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        zip.start_file(name.as_str(), options).unwrap();
        let data = if name.ends_with("/data.pkl") {
            pickle
        } else {
            data
        };
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn damaged_pickles_fail_cleanly() {
    // Every truncation and every one-byte change (to the byte's complement) of a real
    // checkpoint's pickle: each load must return, mostly an error, without panicking, and an
    // error must name the file.
    let dir = tempfile::tempdir().unwrap();
    let entries = entries(&data("reference_checkpoint.pth.tar"));
    let pickle = &entries
        .iter()
        .find(|(n, _)| n.ends_with("/data.pkl"))
        .unwrap()
        .1;
    // Rewritten as-is, it still loads: the damage below is what makes loads fail.
    let path = dir.path().join("reference_checkpoint.pth.tar");
    write_with_pickle(&entries, pickle, &path);
    assert_eq!(TorchFile::load(&path).unwrap().tensors.len(), 12);

    let mut damaged: Vec<Vec<u8>> = (0..pickle.len()).map(|n| pickle[..n].to_vec()).collect();
    for at in 0..pickle.len() {
        let mut p = pickle.clone();
        p[at] ^= 0xff;
        damaged.push(p);
    }
    let mut failed = 0;
    for p in &damaged {
        write_with_pickle(&entries, p, &path);
        if let Err(e) = TorchFile::load(&path) {
            failed += 1;
            let msg = format!("{e:#}");
            assert!(msg.starts_with(&path.display().to_string()), "{msg}");
        }
    }
    assert!(
        failed > pickle.len(),
        "only {failed} of {} failed",
        damaged.len()
    );
}

/// Issue 36, item 8: a storage whose zip entry declares more bytes than the pickle's
/// elements is refused before it is inflated. Here 64 MiB of zeros deflate to a file of a
/// few dozen KB, for a tensor of 24 floats (before: all 64 MiB were inflated, and the
/// tensor loaded from their start).
#[test]
fn a_storage_is_checked_against_its_declared_size_before_it_is_inflated() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flat_state_dict.pt");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let deflated =
        zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries(&data("flat_state_dict.pt")) {
        zip.start_file(name.as_str(), deflated).unwrap();
        if name.ends_with("/data/0") {
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..64 {
                zip.write_all(&zeros).unwrap();
            }
        } else {
            zip.write_all(&data).unwrap();
        }
    }
    zip.finish().unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < 1 << 20);
    let msg = load_error(&path);
    assert!(msg.starts_with(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains("storage data/0 holds 67108864 bytes in the archive, but the pickle says 24 Float elements"),
        "{msg}"
    );
}

/// Issue 36: a negative storage offset is refused with the reason (the message used to
/// stop after the values).
#[test]
fn a_negative_offset_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let entries = entries(&data("flat_state_dict.pt"));
    let pickle = &entries
        .iter()
        .find(|(n, _)| n.ends_with("/data.pkl"))
        .unwrap()
        .1;
    // The first tensor's offset: the first BININT1 0 after its storage (BINPERSID, `Q`).
    let persid = pickle.iter().position(|&b| b == b'Q').unwrap();
    let at = persid
        + pickle[persid..]
            .windows(2)
            .position(|w| w == b"K\x00")
            .unwrap();
    let mut damaged = pickle[..at].to_vec();
    damaged.extend(b"J\xff\xff\xff\xff");
    damaged.extend(&pickle[at + 2..]);
    let path = dir.path().join("flat_state_dict.pt");
    write_with_pickle(&entries, &damaged, &path);
    let msg = load_error(&path);
    assert!(
        msg.contains("offset -1: sizes, strides and offsets cannot be negative"),
        "{msg}"
    );
}

"""Writes the torch.save files that tests/pth.rs reads, and expected.json describing them.

Run from anywhere with a PyTorch >= 1.6 (made with 2.13):  python tests/data/make_torch_files.py
The tests themselves need no Python: the outputs are committed next to this script.
Every value is deterministic (arange or a fixed seed), so re-running rewrites identical tensors.
"""

import argparse
import collections
import json
import os
import pickle
import zipfile

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))


def path(name):
    return os.path.join(HERE, name)


def describe(flat):
    """(name, tensor) pairs -> the JSON the Rust tests compare against, in file order."""
    out = []
    for name, t in flat:
        out.append(
            {
                "name": name,
                "dtype": str(t.dtype).replace("torch.", ""),
                "shape": list(t.shape),
                # Floats as repr strings, which parse back exactly (JSON number parsers may not).
                "values": [repr(v) for v in t.detach().reshape(-1).double().tolist()]
                if t.dtype.is_floating_point
                else t.detach().reshape(-1).tolist(),
            }
        )
    return out


class Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(4)


class Backbone(nn.Module):
    """The reference backbone's naming: base.* (the ResNet) then the BN neck bn.*."""

    def __init__(self):
        super().__init__()
        self.base = Base()
        self.bn = nn.BatchNorm1d(8)


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.zeros(5, 8))


def reference_checkpoint(expected):
    """Exactly the reference's torch.save({'backbone': ..., 'classifier': ..., 'epoch': ...})."""
    torch.manual_seed(0)
    backbone, classifier = Backbone(), Classifier()
    with torch.no_grad():
        backbone.base.conv1.weight.copy_(torch.arange(108, dtype=torch.float32).reshape(4, 3, 3, 3) / 8)
        backbone.base.bn1.running_mean.copy_(torch.randn(4))
        backbone.base.bn1.running_var.copy_(torch.rand(4) + 0.5)
        backbone.base.bn1.num_batches_tracked.fill_(123)
        backbone.bn.weight.copy_(torch.randn(8))
        backbone.bn.bias.copy_(torch.randn(8))
        classifier.W.copy_(torch.randn(5, 8))
    state = {"backbone": backbone.state_dict(), "classifier": classifier.state_dict(), "epoch": 7}
    torch.save(state, path("reference_checkpoint.pth.tar"))
    flat = [("backbone." + k, v) for k, v in state["backbone"].items()]
    flat += [("classifier." + k, v) for k, v in state["classifier"].items()]
    expected["reference_checkpoint.pth.tar"] = {"tensors": describe(flat), "scalars": {"epoch": 7}}


def flat_state_dict(expected):
    """A torchvision-style flat dict: many dtypes, views sharing one storage, empty and 0-dim tensors."""
    torch.manual_seed(1)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = collections.OrderedDict()
    sd["fc.weight"] = base
    sd["fc.weight_t"] = base.t()  # non-contiguous view of base's storage
    sd["fc.window"] = base[1:3, 2:5]  # storage offset 8, strides (6, 1)
    sd["fc.row"] = base[2]  # contiguous, storage offset 12
    sd["fc.alias"] = base  # the same tensor object again: a memo reference in the pickle
    sd["f64"] = torch.randn(2, 3, dtype=torch.float64)
    sd["f16"] = torch.tensor([0.5, -1.25, 65504.0, 1e-3], dtype=torch.float16)
    sd["bf16"] = torch.tensor([1.5, -2.0, 3.0e38], dtype=torch.bfloat16)
    sd["i64"] = torch.tensor([[-(2**62), -1], [0, 2**62 + 7]], dtype=torch.int64)
    sd["i32"] = torch.tensor([-5, 2**31 - 1], dtype=torch.int32)
    sd["i16"] = torch.tensor([-300, 300], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, 127], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 255], dtype=torch.uint8)
    sd["f8"] = torch.tensor([0.5, -2.0, 448.0]).to(torch.float8_e4m3fn)  # _rebuild_tensor_v3
    sd["mask"] = torch.tensor([True, False, False, True, True])
    sd["empty"] = torch.empty(0, 3)
    sd["scalar"] = torch.tensor(2.5)
    sd["expanded"] = torch.tensor([1.0, 2.0, 3.0]).expand(2, 3)  # stride 0
    sd["param"] = nn.Parameter(torch.tensor([0.25, 0.75]))  # _rebuild_parameter
    torch.save(sd, path("flat_state_dict.pt"))
    expected["flat_state_dict.pt"] = {"tensors": describe(sd.items()), "scalars": {}}


def misc_checkpoint(expected):
    """Things training scripts put next to weights, pickled with protocol 4 (FRAME, MEMOIZE, ...)."""
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    m = torch.full((2, 3), 0.5)
    state = {
        "state_dict": collections.OrderedDict([("w", w)]),
        "args": argparse.Namespace(lr=0.1, arch="resnet50", resume=None),
        "best_mAP": 0.75,
        "is_best": True,
        "note": None,
        "history": [1, -2],
        "optimizer": {"state": {0: {"momentum_buffer": m}}, "param_groups": [{"lr": 0.01, "params": [0]}]},
        "device": torch.device("cpu"),
        "size": torch.Size([2, 3]),
    }
    torch.save(state, path("misc_checkpoint.pt"), pickle_protocol=4)
    flat = [("state_dict.w", w), ("optimizer.state.0.momentum_buffer", m)]
    scalars = {
        "args.lr": 0.1,
        "args.arch": "resnet50",
        "args.resume": None,
        "best_mAP": 0.75,
        "is_best": True,
        "note": None,
        "history.0": 1,
        "history.1": -2,
        "optimizer.param_groups.0.lr": 0.01,
        "optimizer.param_groups.0.params.0": 0,
    }
    expected["misc_checkpoint.pt"] = {"tensors": describe(flat), "scalars": scalars}


def broken_files():
    """Files the reader must refuse with a clear message."""
    # A sparse tensor is pickled through a rebuild function the reader does not know: it must not vanish.
    dense = torch.ones(2)
    sparse = torch.sparse_coo_tensor(torch.tensor([[0, 1]]), torch.tensor([3.0, 4.0]), (3,))
    torch.save({"dense": dense, "sparse": sparse}, path("sparse_tensor.pt"))

    # The pre-1.6 format.
    torch.save({"w": torch.ones(2)}, path("legacy.pt"), _use_new_zipfile_serialization=False)

    # A zip written by torch, then copied with one entry altered: data/1 missing, or byteorder 'big'.
    src = path("flat_state_dict.pt")
    with zipfile.ZipFile(src) as z:
        entries = [(info, z.read(info.filename)) for info in z.infolist()]
    for out, edit in [
        ("missing_storage.pt", lambda name, data: None if name.endswith("/data/1") else data),
        ("big_endian.pt", lambda name, data: b"big" if name.endswith("/byteorder") else data),
    ]:
        with zipfile.ZipFile(path(out), "w", zipfile.ZIP_STORED) as z:
            for info, data in entries:
                data = edit(info.filename, data)
                if data is not None:
                    # The archive folder follows the file's stem, as torch.save names it.
                    name = info.filename.replace("flat_state_dict/", out[: -len(".pt")] + "/", 1)
                    z.writestr(name, data)

    # A protocol-0 pickle (text opcodes, which torch never writes) in an otherwise valid layout.
    with zipfile.ZipFile(path("bad_opcode.pt"), "w", zipfile.ZIP_STORED) as z:
        z.writestr("bad_opcode/data.pkl", pickle.dumps({"epoch": 1}, protocol=0))
        z.writestr("bad_opcode/byteorder", b"little")
        z.writestr("bad_opcode/version", b"3\n")


def main():
    expected = {}
    reference_checkpoint(expected)
    flat_state_dict(expected)
    misc_checkpoint(expected)
    broken_files()
    with open(path("expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()

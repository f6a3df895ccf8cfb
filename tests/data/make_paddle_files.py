"""Writes the paddle.save files that tests/it/paddle.rs reads, and adds what paddle.load sees
in them to expected_paddle.json.

Run once with each format generation (see tests/data/README.md), from anywhere:
    python tests/data/make_paddle_files.py      # Paddle 2.x with numpy 1.x -> *_paddle2.pdparams
    python tests/data/make_paddle_files.py      # Paddle 3.x with numpy 2.x -> *_paddle3.pdparams
The tests themselves need no Python: the outputs are committed next to this script.
Every value is deterministic (arange), so re-running rewrites identical tensors.
"""

import json
import os

import numpy as np
import paddle

HERE = os.path.dirname(os.path.abspath(__file__))
GENERATION = paddle.__version__.split(".")[0]  # "2" or "3"


def path(name):
    return os.path.join(HERE, name)


def arange(shape, dtype, scale=1.0):
    n = int(np.prod(shape))
    return paddle.to_tensor((np.arange(n) * scale).astype(dtype).reshape(shape))


def flat(obj, prefix=""):
    """What paddle.load gives back, flattened to (dotted name, value) as the Rust reader names it."""
    out = []
    for k, v in obj.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out += flat(v, name + ".")
        else:
            out.append((name, v))
    return out


def describe(file):
    loaded = paddle.load(path(file))
    tensors, scalars = [], {}
    for name, v in flat(loaded):
        if isinstance(v, (paddle.Tensor, np.ndarray)):
            a = np.array(v)
            tensors.append(
                {
                    "name": name,
                    "dtype": str(a.dtype),
                    "shape": list(a.shape),
                    # Floats as repr strings, which parse back exactly.
                    "values": [repr(float(x)) for x in a.reshape(-1)]
                    if a.dtype.kind == "f"
                    else [int(x) for x in a.reshape(-1)],
                }
            )
        elif name.split(".")[-1] != "StructuredToParameterName@@" and "StructuredToParameterName@@" not in name:
            scalars[name] = v
    with open(path(file), "rb") as f:
        data = f.read()
    protocol = data[1]
    return {
        "paddle": paddle.__version__,
        "numpy": np.__version__,
        "protocol": protocol,
        # Where the arrays' _reconstruct comes from: numpy.core (numpy 1) or numpy._core (2).
        "numpy_module": "numpy._core.multiarray"
        if b"numpy._core.multiarray" in data
        else "numpy.core.multiarray",
        "tensors": tensors,
        "scalars": scalars,
    }


def reproduction_state():
    """A shrunken version of the Paddle reproduction's checkpoint: torchvision names under
    `base.`, BatchNorm buffers `_mean` / `_variance`, the classifier `W` (classes x embedding)."""
    bn = lambda c, off: {  # noqa: E731
        "weight": arange([c], "float32", 0.5),
        "bias": arange([c], "float32", -0.25),
        "_mean": arange([c], "float32", 0.125),
        "_variance": paddle.to_tensor(np.full([c], 1.5 + off, dtype="float32")),
    }
    backbone = {"base.conv1.weight": arange([4, 3, 3, 3], "float32", 1 / 8)}
    backbone.update({f"base.bn1.{k}": v for k, v in bn(4, 0).items()})
    backbone.update({f"bn.{k}": v for k, v in bn(8, 1).items()})
    classifier = {"W": arange([5, 8], "float32", 0.01)}
    return backbone, classifier


def main():
    g = GENERATION
    written = []

    # A flat state dict (what `paddle.save(layer.state_dict())` writes: name -> ndarray, plus
    # StructuredToParameterName@@), of float32, float64 and int64, 0-dim and empty included.
    paddle.seed(0)
    layer = paddle.nn.Sequential(paddle.nn.Conv2D(3, 2, 1), paddle.nn.BatchNorm2D(2))
    state = layer.state_dict()
    for i, (k, v) in enumerate(state.items()):
        v.set_value(arange(v.shape, "float32", 0.5 + i))
    state["f64"] = arange([2, 3], "float64", 1 / 3)
    state["i64"] = paddle.to_tensor(np.array([-3, 0, 2**40], dtype="int64"))
    state["scalar"] = paddle.to_tensor(np.array(2.5, dtype="float32"))
    state["empty"] = paddle.to_tensor(np.zeros([0, 3], dtype="float32"))
    name = f"state_dict_paddle{g}.pdparams"
    paddle.save(state, path(name))
    written.append(name)

    # The reproduction's checkpoint: nested, so paddle.save pickles each tensor as
    # (param_name, ndarray) through builtins.tuple; protocol 4 (the default) and 2.
    backbone, classifier = reproduction_state()
    checkpoint = {"backbone": backbone, "classifier": classifier, "epoch": 7}
    for protocol in (4, 2):
        name = f"checkpoint_paddle{g}_protocol{protocol}.pdparams"
        paddle.save(checkpoint, path(name), protocol=protocol)
        written.append(name)

    expected_path = path("expected_paddle.json")
    expected = {}
    if os.path.exists(expected_path):
        with open(expected_path) as f:
            expected = json.load(f)
    for name in written:
        expected[name] = describe(name)
    with open(expected_path, "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")
    for name in written:
        print(name, os.path.getsize(path(name)), "bytes")


if __name__ == "__main__":
    main()

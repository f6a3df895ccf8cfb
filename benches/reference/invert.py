"""PyTorch side of `cargo bench --bench invert`: one DeepInversion iteration as the
reference (deep_inversion/deepinversion.py) runs it, restated in plain torch.nn.

The teacher is the ReID model of train_step.py (ResNet-50, layer4 stride 2, average pool,
BatchNorm1d head, bias-free classifier) in eval mode, with the reference's forward hooks on
every BatchNorm2d and on the head's BatchNorm1d: each computes its input's mean and biased
variance (through permute + contiguous + view, as the hooks do) and the L2 distances to the
running statistics. As in the reference, the teacher's weights require gradients
(`net_teacher.requires_grad_(True)`), so backward also computes weight gradients it never
uses. Iteration: set the lr (warm-up + cosine), flip (alternating, as agd's side), zero
both gradients, forward, CE + accuracy + image priors + BN loss, `.item()` of every meter,
backward, Adam(betas 0.5/0.9) step on the images, per-channel clip, and the best-loss copy.

Standalone it prints one JSON line of median seconds; with --serve it prints
{"ready": true, ...} and then runs one iteration per "step" line on stdin, answering each
with a JSON line. If torch cannot be imported it prints {"skipped": reason} and exits 0.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

try:
    import torch
    from torch import nn
    import torch.nn.functional as F
except ImportError as e:
    print(json.dumps({"skipped": f"torch cannot be imported by {sys.executable}: {e}"}))
    sys.exit(0)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import ReidModel  # noqa: E402  (the same ResNet-50 ReID model)

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


class FeatureHook:
    """The reference's DeepInversionFeatureHook (2-D) / DeepInversionFeatureHook1D."""

    def __init__(self, module):
        self.r_feature = None
        module.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        x = inputs[0]
        nch = x.shape[1]
        if x.dim() == 4:
            mean = x.mean([0, 2, 3])
            var = x.permute(1, 0, 2, 3).contiguous().view([nch, -1]).var(1, unbiased=False)
        else:
            mean = x.mean([0])
            var = x.permute(1, 0).contiguous().view([nch, -1]).var(1, unbiased=False)
        self.r_feature = torch.norm(module.running_var.data - var, 2) + torch.norm(
            module.running_mean.data - mean, 2
        )


def prior_losses(x):
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    l2 = torch.norm(d1) + torch.norm(d2) + torch.norm(d3) + torch.norm(d4)
    l1 = (d1.abs() / 255.0).mean() + (d2.abs() / 255.0).mean() + (
        d3.abs() / 255.0
    ).mean() + (d4.abs() / 255.0).mean()
    return l1 * 255.0, l2


def clip(t):
    for c in range(3):
        m, s = MEAN[c], STD[c]
        t[:, c] = torch.clamp(t[:, c], -m / s, (1 - m) / s)
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--classes", type=int, default=1041)
    ap.add_argument("--serve", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = ReidModel(args.classes).eval()
    hooks = [FeatureHook(m) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    hooks.append(FeatureHook(net.bn))
    net.requires_grad_(True)  # the reference's get_images(); bn.bias included

    r_feature, first_bn_multiplier = 0.01, 10.0
    tv_l1, tv_l2, l2_scale, main_mult = 0.0, 1e-4, 1e-5, 1.0
    base_lr, iters = 0.2, 1000

    inputs = torch.randn(args.batch, 3, args.height, args.width, requires_grad=True)
    targets = torch.randint(args.classes, (args.batch,))
    optimizer = torch.optim.Adam([inputs], lr=base_lr, betas=(0.5, 0.9), eps=1e-8)
    state = {"it": 0, "best": math.inf, "best_inputs": None}

    def step():
        it = state["it"]
        t0 = time.perf_counter()
        lr = (
            base_lr * (it + 1) / 100
            if it < 100
            else 0.5 * (1 + math.cos(math.pi * (it - 100) / (iters - 100))) * base_lr
        )
        for g in optimizer.param_groups:
            g["lr"] = lr
        x = torch.flip(inputs, dims=(3,)) if it % 2 == 1 else inputs
        optimizer.zero_grad()
        net.zero_grad()
        ta = time.perf_counter()
        _, preds = net(x)
        ce = F.cross_entropy(preds, targets)
        acc = torch.mean((torch.argmax(preds, dim=1) == targets).float())
        var_l1, var_l2 = prior_losses(x)
        loss_l2 = torch.norm(x.view(args.batch, -1), dim=1).mean()
        loss_image = tv_l2 * var_l2 + tv_l1 * var_l1 + l2_scale * loss_l2
        rescale = [first_bn_multiplier] + [1.0] * (len(hooks) - 1)
        loss_r = r_feature * sum(h.r_feature * m for h, m in zip(hooks, rescale))
        loss = main_mult * ce + loss_r + loss_image
        meters = [loss.item(), loss_r.item(), ce.item(), loss_image.item(), acc.item()]
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        inputs.data = clip(inputs.data)
        if state["best"] > loss.item():
            state["best_inputs"] = inputs.data.clone()
            state["best"] = loss.item()
        t3 = time.perf_counter()
        state["it"] = it + 1
        return {
            "seconds_per_step": t3 - t0,
            "forward": t1 - ta,
            "backward": t2 - t1,
            "optimizer": (ta - t0) + (t3 - t2),
            "loss": meters[0],
        }

    about = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    if args.serve:
        print(json.dumps({"ready": True, **about}), flush=True)
        for line in sys.stdin:
            if line.strip() != "step":
                break
            print(json.dumps(step()), flush=True)
        return

    warm_up = step()["seconds_per_step"]
    timed = [step() for _ in range(max(args.steps, 1))]
    keys = [k for k in timed[0] if k != "loss"]
    result = {k: statistics.median(t[k] for t in timed) for k in keys}
    result.update(warm_up=warm_up, loss=timed[-1]["loss"], steps=len(timed), **about)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

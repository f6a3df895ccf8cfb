"""PyTorch side of `cargo bench --bench train_step`: the same training step as agd's.

ResNet-50 (torchvision layout, layer4 stride 2) -> global average pool -> BatchNorm1d
head (its bias trained, as the reference's trainers train it) -> bias-free linear
classifier; loss = cross-entropy + TriHard+ soft-margin triplet on the pooled feature;
SGD (Nesterov, momentum 0.9, weight decay 5e-4) over three parameter groups. Written in
plain torch.nn because torchvision is not installed next to the libtorch that agd links.

Standalone it prints one JSON line: median seconds per step (and per phase), the
warm-up step's seconds, steps, threads, torch version. With --serve it prints
{"ready": true, ...} and then runs one step per "step" line on stdin, answering each
with a JSON line of its seconds. If torch cannot be imported it prints
{"skipped": reason} and exits 0, so that the bench still reports agd's side.
"""

import argparse
import json
import statistics
import sys
import time
import warnings

# torch warns at import when NumPy is absent; nothing here needs NumPy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

try:
    import torch
    from torch import nn
    import torch.nn.functional as F
except ImportError as e:  # reported by the bench instead of failing it
    print(json.dumps({"skipped": f"torch cannot be imported by {sys.executable}: {e}"}))
    sys.exit(0)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride, as torchvision's v1.5) -> 1x1, x4 expansion."""

    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity, inplace=True)


class ResNet50(nn.Module):
    """The trunk without the ImageNet classifier."""

    def __init__(self, last_stride=2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        for i, (planes, blocks, stride) in enumerate(
            [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, last_stride)], start=1
        ):
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(cin, planes, stride if b == 0 else 1))
                cin = planes * Bottleneck.expansion
            setattr(self, f"layer{i}", nn.Sequential(*layer))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


class ReidModel(nn.Module):
    def __init__(self, classes, width=2048):
        super().__init__()
        self.base = ResNet50()
        self.bn = nn.BatchNorm1d(width)
        # The reference's constructor freezes the neck's bias; its trainer's
        # requires_grad_(True) on the whole network each epoch unfreezes it again.
        self.bn.bias.requires_grad_(False)
        self.W = nn.Parameter(torch.randn(classes, width) * 0.001)

    def forward(self, x):
        glob = F.adaptive_avg_pool2d(self.base(x), 1).flatten(1)
        embedding = self.bn(glob)
        return glob, embedding @ self.W.t()


def euclid(x, y):
    xx = x.pow(2).sum(1, keepdim=True)
    yy = y.pow(2).sum(1, keepdim=True).t()
    return (xx + yy - 2 * x @ y.t()).clamp(min=1e-12).sqrt()


def triplet(glob, pids):
    """TriHard+ soft margin, with the gradient through the same expression as agd's."""
    dist = euclid(glob, glob)
    same = pids.unsqueeze(0) == pids.unsqueeze(1)
    with torch.no_grad():
        d = dist.detach()
        p = d.masked_fill(~same, float("-inf")).argmax(1, keepdim=True)
        n = d.masked_fill(same, float("inf")).argmin(1, keepdim=True)
    d_ap = dist.gather(1, p).squeeze(1)
    d_an = dist.gather(1, n).squeeze(1)
    xp = glob.index_select(0, p.squeeze(1))
    xn = glob.index_select(0, n.squeeze(1))
    t = (
        xp.pow(2).sum(1)
        - xn.pow(2).sum(1)
        + 2 * (glob * xn).sum(1)
        - 2 * (glob * xp).sum(1)
    ) / (d_ap + d_an)
    return F.softplus(t).mean()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--classes", type=int, default=751)
    ap.add_argument("--ids", type=int, default=8, help="identities per P x K batch")
    ap.add_argument("--serve", action="store_true", help="step on request (see below)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ReidModel(args.classes).train().requires_grad_(True)
    trunk = list(model.base.parameters())
    opt = torch.optim.SGD(
        [
            {"params": trunk, "lr": 0.01},
            {"params": list(model.bn.parameters()), "lr": 0.1},
            {"params": [model.W], "lr": 0.1},
        ],
        lr=0.01,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
    )
    x = torch.randn(args.batch, 3, args.height, args.width)
    k = args.batch // args.ids
    ids = torch.randperm(args.classes)[: args.ids]
    pids = ids.repeat_interleave(k)[torch.randperm(args.ids * k)]

    def step():
        t0 = time.perf_counter()
        opt.zero_grad()  # PyTorch's default: grads set to None, not zeroed
        ta = time.perf_counter()
        glob, logits = model(x)
        loss = F.cross_entropy(logits, pids) + triplet(glob, pids)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        return {
            "seconds_per_step": t3 - t0,
            "forward": t1 - ta,
            "backward": t2 - t1,
            "optimizer": (ta - t0) + (t3 - t2),
            "loss": loss.item(),
        }

    about = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    if args.serve:
        # One step per "step" line on stdin, one JSON line back each: the bench
        # alternates these with agd's steps, so load from elsewhere hits both alike.
        print(json.dumps({"ready": True, **about}), flush=True)
        for line in sys.stdin:
            if line.strip() != "step":
                break
            print(json.dumps(step()), flush=True)
        return

    warm_up = step()["seconds_per_step"]  # allocations, oneDNN primitives
    timed = [step() for _ in range(max(args.steps, 1))]
    keys = [k for k in timed[0] if k != "loss"]
    result = {k: statistics.median(t[k] for t in timed) for k in keys}
    result.update(warm_up=warm_up, loss=timed[-1]["loss"], steps=len(timed), **about)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""PyTorch side of `cargo bench --bench incremental_step`: the reference's incremental step.

The step of the reference's `InversionIncrementalTrainer.train_step` (GD: `res-triangle`,
factor 3), re-stated in plain torch.nn with the reference's structure and losses:

- old model (`networks_prec`, eval mode, parameters frozen) and student (a copy of it with
  the classifier expanded by the new classes, rows prepended), each a `Networks`: ResNet-50
  backbone returning a dict {embedding, global, maps} (BN neck), then a bias-free linear
  classifier adding "preds";
- teacher forward on the dreamed half, its outputs detached; one student forward over
  new ⊕ dreamed in train mode, split in halves;
- cross-entropy + TriHard+ (soft margin, the reference's hard-example mining by masked
  selection) on both halves, + factor · res-triangle(student dreamed half, teacher);
- backward, then SGD (Nesterov, momentum 0.9, weight decay 5e-4) over the reference's
  three parameter groups (base ×1, the rest of the backbone ×10, classifier ×10).

Standalone it prints one JSON line: median seconds per step (and per phase), the warm-up
step's seconds, the last step's losses, steps, threads, torch version. With --serve it
prints {"ready": true, ...} and then runs one step per "step" line on stdin, answering
each with a JSON line of its seconds and losses. If torch cannot be imported it prints
{"skipped": reason} and exits 0, so that the bench still reports agd's side.
"""

import argparse
import copy
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

# The torchvision-layout bottleneck (stride on the 3x3), as the reference's `Base` builds.
from train_step import Bottleneck  # noqa: E402  (same folder; torch is importable here)


# ---- model: the reference's ResNet (Base + BN neck), Linear classifier, Networks ----


class Base(nn.Module):
    """ResNet-50 trunk returning the four layer outputs (the distillation's `maps`)."""

    def __init__(self, last_stride=2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
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
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [x1, x2, x3, x4]


class Outputs(dict):
    """The reference's `DivisibleDict`: split every tensor in halves, or detach them all."""

    def divide(self, sections):
        def split(v):
            if isinstance(v, torch.Tensor):
                return v.split(v.size(0) // sections)
            parts = [split(t) for t in v]
            return [[p[s] for p in parts] for s in range(sections)]

        out = [Outputs() for _ in range(sections)]
        for key, value in self.items():
            for o, part in zip(out, split(value)):
                o[key] = part
        return out

    def detach(self):
        for key, value in self.items():
            self[key] = (
                value.detach()
                if isinstance(value, torch.Tensor)
                else [t.detach() for t in value]
            )
        return self


class ResNet(nn.Module):
    """Backbone: global average pool of layer4 -> BatchNorm1d neck (bias frozen here,
    trained again by the trainer's requires_grad_(True))."""

    def __init__(self, embedding=2048):
        super().__init__()
        self.base = Base()
        self.bn = nn.BatchNorm1d(embedding)
        self.bn.bias.requires_grad_(False)

    def forward(self, x):
        x1, x2, x3, feature_map = self.base(x)
        feature = F.adaptive_avg_pool2d(feature_map, 1).view(feature_map.size(0), -1)
        return Outputs(
            {
                "embedding": self.bn(feature),
                "global": feature,
                "maps": [x1, x2, x3, feature_map],
            }
        )


class Linear(nn.Module):
    """Bias-free classifier W (classes x features), N(0, 0.001); expand prepends rows."""

    def __init__(self, features, classes):
        super().__init__()
        self.W = nn.Parameter(torch.empty(classes, features).normal_(std=0.001))

    def forward(self, x):
        return x.mm(self.W.t())

    def expand(self, classes):
        fresh = torch.empty(classes, self.W.size(1)).normal_(std=0.001)
        self.W = nn.Parameter(torch.cat([fresh, self.W.data], dim=0))


class Networks(nn.Module):
    def __init__(self, backbone, classifier):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier

    def forward(self, x):
        outputs = self.backbone(x)
        outputs["preds"] = self.classifier(outputs["embedding"])
        return outputs


# ---- losses, as the reference writes them ----


def euclidean_dist(x, y):
    m, n = x.size(0), y.size(0)
    xx = x.pow(2).sum(1, keepdim=True).expand(m, n)
    yy = y.pow(2).sum(1, keepdim=True).expand(n, m).t()
    dist = xx + yy
    dist.addmm_(x, y.t(), beta=1, alpha=-2)
    return dist.clamp(min=1e-12).sqrt()


def hard_example_mining(dist, labels):
    """Hardest positive / negative per anchor by masked selection (P x K batches only)."""
    n = dist.size(0)
    is_pos = labels.expand(n, n).eq(labels.expand(n, n).t())
    is_neg = labels.expand(n, n).ne(labels.expand(n, n).t())
    dist_ap, rel_p = torch.max(dist[is_pos].contiguous().view(n, -1), 1, keepdim=True)
    dist_an, rel_n = torch.min(dist[is_neg].contiguous().view(n, -1), 1, keepdim=True)
    ind = torch.arange(n, dtype=labels.dtype).unsqueeze(0).expand(n, n)
    p_inds = torch.gather(ind[is_pos].contiguous().view(n, -1), 1, rel_p.data).squeeze(1)
    n_inds = torch.gather(ind[is_neg].contiguous().view(n, -1), 1, rel_n.data).squeeze(1)
    return dist_ap.squeeze(1), dist_an.squeeze(1), p_inds, n_inds


def trihard_plus(feat, labels, margin=0.0):
    """TriHard+ with soft margin, the gradient through the expanded distance difference."""
    dist = euclidean_dist(feat, feat)
    dist_ap, dist_an, p_inds, n_inds = hard_example_mining(dist, labels)
    xp, xn = feat[p_inds], feat[n_inds]
    diff = (
        xp.pow(2).sum(dim=1)
        - xn.pow(2).sum(dim=1)
        + 2.0 * (feat * xn).sum(dim=1)
        - 2.0 * (feat * xp).sum(dim=1)
    ) / (dist_ap + dist_an)
    return (1.0 + (diff + margin).exp()).log().mean()


def cosine_criterion(a, b):
    return F.cosine_embedding_loss(a, b, torch.ones(a.size(0)).to(a.device))


def pairwise_residual(a, b, targets):
    """All-pairs residuals, kept for same-identity pairs i < j (row-major)."""
    n = a.size(0)
    residual_a = a.unsqueeze(0) - a.unsqueeze(1)
    residual_b = b.unsqueeze(0) - b.unsqueeze(1)
    is_pos = targets.expand(n, n).t().eq(targets.expand(n, n))
    assert is_pos.sum(dim=1).to(torch.int).unique().size(0) == 1, "not a P x K batch"
    is_pos = is_pos.triu_(diagonal=1).to(torch.bool)
    return residual_a[is_pos], residual_b[is_pos], is_pos


def triangle_criterion(a, b, targets):
    embedding_loss = cosine_criterion(a, b)
    residual_a, residual_b, _ = pairwise_residual(a, b, targets)
    residual_cos = (
        F.normalize(residual_a, p=2, dim=1) * F.normalize(residual_b, p=2, dim=1)
    ).sum(dim=1)
    return embedding_loss + 0.5 * (1.0 - residual_cos.mean())


def res_triangle(outputs, outputs_old, targets):
    """GD: `triangle` on the residuals, each labelled by its pair's identity."""
    a, b = outputs["embedding"], outputs_old["embedding"]
    residual_a, residual_b, is_pos = pairwise_residual(a, b, targets)
    n = targets.size(0)
    return triangle_criterion(residual_a, residual_b, targets.expand(n, n)[is_pos])


def pk_pids(classes, ids, k):
    chosen = torch.randperm(classes)[:ids]
    return chosen.repeat_interleave(k)[torch.randperm(ids * k)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--batch", type=int, default=32, help="images per half (new, dreamed)")
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--old-classes", type=int, default=1041)
    ap.add_argument("--new-classes", type=int, default=751)
    ap.add_argument("--ids", type=int, default=8, help="identities per P x K half")
    ap.add_argument("--factor", type=float, default=3.0, help="res-triangle weight")
    ap.add_argument("--serve", action="store_true", help="step on request (see below)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # As main_incremental.py: the old model, and the student a deep copy of it whose
    # classifier is expanded by the new classes.
    backbone_prec, classifier_prec = ResNet(), Linear(2048, args.old_classes)
    backbone, classifier = copy.deepcopy(backbone_prec), copy.deepcopy(classifier_prec)
    classifier.expand(args.new_classes)
    networks_prec = Networks(backbone_prec, classifier_prec)
    networks = Networks(backbone, classifier)
    # The trainer's before_train: the student trains (every parameter requires grad again,
    # the neck's bias included, as there), the old model is frozen in eval mode.
    networks.train().requires_grad_(True)
    networks_prec.eval().requires_grad_(False)

    # build_optimizer + the lr scheduler at epoch 1 (lr = base x lr_mult per group).
    base_ids = set(map(id, backbone.base.parameters()))
    neck = [p for p in backbone.parameters() if id(p) not in base_ids]
    lr = 0.01
    opt = torch.optim.SGD(
        [
            {"params": backbone.base.parameters(), "lr": lr},
            {"params": neck, "lr": lr * 10},
            {"params": classifier.parameters(), "lr": lr * 10},
        ],
        lr=lr,
        momentum=0.9,
        weight_decay=5e-4,
        nesterov=True,
    )

    shape = (args.batch, 3, args.height, args.width)
    inputs, inputs_prec = torch.randn(shape), torch.randn(shape)
    k = args.batch // args.ids
    pids = pk_pids(args.new_classes, args.ids, k)
    # To avoid overlapping pids, the dreamed (old-task) pids follow the new ones.
    pids_prec = pk_pids(args.old_classes, args.ids, k) + args.new_classes

    def step():
        t0 = time.perf_counter()
        opt.zero_grad()  # PyTorch's default: grads set to None, not zeroed
        ta = time.perf_counter()
        outdated_outputs_prec = networks_prec(inputs_prec).detach()
        tb = time.perf_counter()
        outputs, outputs_prec = networks(torch.cat([inputs, inputs_prec], dim=0)).divide(2)
        pid_loss = F.cross_entropy(
            torch.cat([outputs["preds"], outputs_prec["preds"]], dim=0),
            torch.cat([pids, pids_prec], dim=0),
        )
        triplet_loss = trihard_plus(
            torch.cat([outputs["global"], outputs_prec["global"]], dim=0),
            torch.cat([pids, pids_prec], dim=0),
        )
        distillation_loss = args.factor * res_triangle(
            outputs_prec, outdated_outputs_prec, pids_prec
        )
        loss = pid_loss + triplet_loss + distillation_loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        return {
            "seconds_per_step": t3 - t0,
            "teacher": tb - ta,
            "forward": t1 - tb,
            "backward": t2 - t1,
            "optimizer": (ta - t0) + (t3 - t2),
            "ce": pid_loss.item(),
            "triplet": triplet_loss.item(),
            "distill": distillation_loss.item(),
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
    losses = ("ce", "triplet", "distill")
    keys = [k for k in timed[0] if k not in losses]
    result = {k: statistics.median(t[k] for t in timed) for k in keys}
    result.update({k: timed[-1][k] for k in losses})
    result.update(warm_up=warm_up, steps=len(timed), **about)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

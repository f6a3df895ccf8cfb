"""The reference's evaluation and k-reciprocal re-ranking, rendered with numpy + scikit-learn
for timing against agd (benches/evaluate.rs runs it; see docs/method.md §8).

It keeps the reference's data structures and their lifetimes, which decide its speed and
memory: dense (Q+G)² float32 distances (kept alive, as the reference keeps its torch
matrix), a row-scaled copy, a full argsort (int64, then int32), dense float16 encodings and
their expansion, per-column inverted lists, a per-query float16 Jaccard loop, and queries
evaluated in chunks of 1024 against the whole gallery. The reference computes the raw
distances with torch's `addmm_`; numpy's in-place BLAS products stand in for it (one
(Q+G)² buffer, like `addmm_`).

Usage: python evaluate.py {evaluate|rerank} DIR
DIR holds features.f32 ((Q+G)×D little-endian float32, queries first) and meta.json
(nq, ng, dim, query_pids, query_cams, gallery_pids, gallery_cams). Prints one JSON line.
"""

import json
import re
import sys
import time

import numpy as np
from sklearn.metrics import average_precision_score

STEP = 1024
K1, K2, LAMBDA = 20, 6, 0.3


def status_kib(field):
    text = open("/proc/self/status").read()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def reset_peak():
    """Restart the kernel's peak-RSS counter so the peak measured is the phase's own."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def ranking_metrics(dist, qp, qc, gp, gc, topk=20):
    """The reference's per-chunk mAP/CMC: full argsort per row, sklearn's AP per query."""
    order = np.argsort(dist, axis=1)
    aps, first_at, valid = [], np.zeros(topk), 0
    for i in range(dist.shape[0]):
        ranked = order[i]
        keep = (gp[ranked] != qp[i]) | (gc[ranked] != qc[i])
        hits = gp[ranked][keep] == qp[i]
        if not hits.any():
            continue
        aps.append(average_precision_score(hits, -dist[i][ranked][keep]))
        first = np.flatnonzero(hits)[0]
        if first < topk:
            first_at[first] += 1
        valid += 1
    return aps, first_at.cumsum(), valid


def cosine_distance(q, g):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    return 1.0 / (qn @ gn.T + 1.0)


def reciprocal(rank, i, k):
    forward = rank[i, :k]
    backward = rank[forward, :k]
    rows = np.where(backward == i)[0]
    return forward[rows]


def re_rank(q, g, k1=K1, k2=K2, lam=LAMBDA):
    """k-reciprocal re-ranking of one chunk of queries against the whole gallery."""
    nq = q.shape[0]
    feat = np.concatenate([q, g])
    n = feat.shape[0]
    raw = feat @ feat.T  # one (Q+G)² buffer, then updated in place like addmm_
    raw *= -2.0
    sq = np.square(feat).sum(axis=1)
    raw += sq[:, None]
    raw += sq[None, :]
    del feat
    # Scaled by each column's maximum, then transposed: row i is scaled by its maximum.
    dist = np.transpose(raw / np.max(raw, axis=0))
    enc = np.zeros_like(dist).astype(np.float16)
    rank = np.argsort(dist).astype(np.int32)

    half = int(np.around(k1 / 2)) + 1
    for i in range(n):
        mine = reciprocal(rank, i, k1 + 1)
        grown = mine
        for cand in mine:
            theirs = reciprocal(rank, cand, half)
            if len(np.intersect1d(theirs, mine)) > 2 / 3 * len(theirs):
                grown = np.append(grown, theirs)
        grown = np.unique(grown)
        w = np.exp(-dist[i, grown])
        enc[i, grown] = w / np.sum(w)
    dist = dist[:nq]
    if k2 != 1:
        expanded = np.zeros_like(enc, dtype=np.float16)
        for i in range(n):
            expanded[i, :] = np.mean(enc[rank[i, :k2], :], axis=0)
        enc = expanded
        del expanded
    del rank
    inverted = [np.where(enc[:, c] != 0)[0] for c in range(n)]

    jaccard = np.zeros_like(dist, dtype=np.float16)
    for i in range(nq):
        shared = np.zeros(shape=[1, n], dtype=np.float16)
        cols = np.where(enc[i, :] != 0)[0]
        for c in cols:
            rows = inverted[c]
            shared[0, rows] = shared[0, rows] + np.minimum(enc[i, c], enc[rows, c])
        jaccard[i] = 1 - shared / (2 - shared)
    final = jaccard * (1 - lam) + dist * lam
    del dist, enc, jaccard, raw
    return final[:nq, nq:]


def main():
    mode, folder = sys.argv[1], sys.argv[2]
    meta = json.load(open(f"{folder}/meta.json"))
    nq, ng, dim = meta["nq"], meta["ng"], meta["dim"]
    feats = np.fromfile(f"{folder}/features.f32", dtype="<f4").reshape(nq + ng, dim)
    q, g = feats[:nq], feats[nq:]
    qp, qc = np.asarray(meta["query_pids"]), np.asarray(meta["query_cams"])
    gp, gc = np.asarray(meta["gallery_pids"]), np.asarray(meta["gallery_cams"])
    loaded_kib = status_kib("VmRSS")
    reset_peak()

    start = time.perf_counter()
    aps, cmcs, valid, rerank_s = [], [], 0, 0.0
    # The reference's loop: len // step + 1 chunks (its last one may be empty; skipped).
    for c in range(nq // STEP + 1):
        rows = slice(c * STEP, min((c + 1) * STEP, nq))
        if rows.start >= rows.stop:
            continue
        if mode == "rerank":
            t = time.perf_counter()
            dist = re_rank(q[rows], g)
            rerank_s += time.perf_counter() - t
        else:
            dist = cosine_distance(q[rows], g)
        a, cum, v = ranking_metrics(dist, qp[rows], qc[rows], gp, gc)
        aps.append(a)
        cmcs.append(cum)
        valid += v
        del dist
    total_s = time.perf_counter() - start
    cmc = sum(cmcs) / valid
    print(
        json.dumps(
            {
                "seconds": total_s,
                "rerank_seconds": rerank_s,
                "loaded_kib": loaded_kib,
                "peak_kib": status_kib("VmHWM"),
                "map": float(np.concatenate(aps).mean()),
                "rank1": float(cmc[0]),
            }
        )
    )


if __name__ == "__main__":
    main()

"""Detections scored against a synthetic pool's ground-truth boxes (tests, training cards, benches)."""

from __future__ import annotations

import json
import tarfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

Box = list[float]  # [x1, y1, x2, y2], normalised to 0..1


def shape_kind(shape: dict) -> str:
    """A ground-truth shape's kind ("circle"): the closed-set detector's class."""
    return shape["label"]


def shape_phrase(shape: dict) -> str:
    """A ground-truth shape's colour and kind ("red circle"): the open-vocabulary detector's name."""
    return f"{shape['color']} {shape['label']}"


def box_iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def pool_metas(pool: Path) -> dict[str, dict]:
    """uid -> sample json of every successful sample with a ground truth, from the pool's tars."""
    metas = {}
    for tar_path in sorted(Path(pool).glob("*.tar")):
        with tarfile.open(tar_path) as tf:
            for member in tf:
                if not member.name.endswith(".json"):
                    continue
                meta = json.loads(tf.extractfile(member).read())
                if meta.get("gt") and meta.get("status") == "success":
                    metas[meta["uid"]] = meta
    return metas


def pool_truth(pool: Path, class_of: Callable[[dict], str] = shape_kind) -> dict[str, list[tuple[str, Box]]]:
    """uid -> [(class, normalised box)] of every successful sample's ``gt.shapes`` in the pool's tars."""
    truth = {}
    for uid, meta in pool_metas(pool).items():
        w, h = meta["width"], meta["height"]
        truth[uid] = [
            (class_of(s), [s["bbox"][0] / w, s["bbox"][1] / h, s["bbox"][2] / w, s["bbox"][3] / h])
            for s in meta["gt"]["shapes"]
        ]
    return truth


def greedy_matches(
    boxes: list[Box], labels: list[str], scores: list[float], gts: list[tuple[str, Box]], threshold: float
) -> list[tuple[int, bool]]:
    """One image: its predictions best score first, each taking the unmatched ground-truth box of its
    class with the highest IoU >= threshold; (prediction index, matched) in that order."""
    used = [False] * len(gts)
    out = []
    for k in np.argsort(-np.asarray(scores, np.float64), kind="stable"):
        best, best_iou = -1, threshold
        for j, (label, box) in enumerate(gts):
            if not used[j] and label == labels[k] and (iou := box_iou(boxes[k], box)) >= best_iou:
                best, best_iou = j, iou
        if best >= 0:
            used[best] = True
        out.append((int(k), best >= 0))
    return out


def match_at_iou(
    predicted: dict[str, tuple[list[Box], list[str], list[float]]],
    truth: dict[str, list[tuple[str, Box]]],
    threshold: float = 0.5,
) -> dict[str, dict[str, int]]:
    """Per class true positives, predictions and ground-truth boxes (matching: :func:`greedy_matches`)."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"tp": 0, "pred": 0, "gt": 0})
    for uid, (boxes, labels, scores) in predicted.items():
        for label, _ in truth[uid]:
            counts[label]["gt"] += 1
        for k, matched in greedy_matches(boxes, labels, scores, truth[uid], threshold):
            counts[labels[k]]["pred"] += 1
            counts[labels[k]]["tp"] += matched
    return dict(counts)


def totals(counts: dict[str, dict[str, int]], classes: set[str] | None = None) -> tuple[float, float]:
    """(precision, recall) summed over ``classes`` (all when None); 0 where there is nothing to divide."""
    picked = [c for k, c in counts.items() if classes is None or k in classes]
    tp = sum(c["tp"] for c in picked)
    pred = sum(c["pred"] for c in picked)
    gt = sum(c["gt"] for c in picked)
    return (tp / pred if pred else 0.0, tp / gt if gt else 0.0)


def average_precision(
    predicted: dict[str, tuple[list[Box], list[str], list[float]]],
    truth: dict[str, list[tuple[str, Box]]],
    threshold: float = 0.5,
) -> dict[str, float]:
    """Per class AP at ``threshold`` IoU (all-point interpolation, as COCO's and ultralytics' AP50):
    detections ranked by score across images, matched per image by :func:`greedy_matches`. Over
    detections cut at a confidence floor it is a lower bound of the model's full-curve AP."""
    hits: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    n_gt: dict[str, int] = defaultdict(int)
    for gts in truth.values():
        for label, _ in gts:
            n_gt[label] += 1
    for uid, (boxes, labels, scores) in predicted.items():
        for k, matched in greedy_matches(boxes, labels, scores, truth[uid], threshold):
            hits[labels[k]].append((float(scores[k]), matched))
    out = {}
    for label, total in n_gt.items():
        ranked = sorted(hits.get(label, []), key=lambda h: -h[0])
        if not ranked:
            out[label] = 0.0
            continue
        tp = np.cumsum([h[1] for h in ranked], dtype=np.float64)
        recall, precision = tp / total, tp / np.arange(1, len(tp) + 1)
        envelope = np.maximum.accumulate(precision[::-1])[::-1]  # precision made monotone from the right
        out[label] = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * envelope))
    return out

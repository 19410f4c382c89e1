"""Plan and write one shard of the synthetic pool."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from curate.synth.captions_en import (
    caption_empty,
    caption_en,
    caption_filename,
    caption_largest_only,
    caption_too_short,
    caption_vague,
)
from curate.synth.captions_i18n import caption_foreign
from curate.synth.faults import FaultRates
from curate.synth.i2d_format import ShardWriter, compute_key, oom_sample_per_shard, write_stats
from curate.synth.render import corrupt_bytes, damage_scan, render_jpeg
from curate.synth.scene import Scene, perturb_scene, sample_original_size, sample_scene, with_repeats
from curate.synth.text import with_text

URL_TEMPLATE = "https://shapes.example/img/{uid}.jpg"

# What urllib's str(err) looks like for the usual reasons a web image does not download.
DOWNLOAD_ERRORS: tuple[tuple[str, float], ...] = (
    ("HTTP Error 404: Not Found", 0.45),
    ("HTTP Error 403: Forbidden", 0.15),
    ("<urlopen error [Errno -2] Name or service not known>", 0.12),
    ("The read operation timed out", 0.10),
    ("HTTP Error 500: Internal Server Error", 0.06),
    ("<urlopen error [Errno 111] Connection refused>", 0.06),
    ("HTTP Error 410: Gone", 0.03),
    (
        "<urlopen error [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
        "unable to get local issuer certificate (_ssl.c:1006)>",
        0.03,
    ),
)


_TEXT_STREAM = 2  # stream 1 corrupts bytes
_REPEAT_STREAM = 3


def make_uid(seed: int, shard_id: int, index: int) -> str:
    return hashlib.md5(f"curate-synth-shapes/{seed}/{shard_id}/{index}".encode()).hexdigest()


@dataclass
class PlannedSample:
    index: int
    uid: str
    fault: str
    scene: Scene
    caption: str
    true_caption: str
    language: str = "en"
    near_duplicate_of: str | None = None
    swapped_with: str | None = None
    error_message: str | None = None


def _sample_rng(seed: int, shard_id: int, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, shard_id, index, stream])


def _fresh(
    seed: int, shard_id: int, index: int, uid: str, fault: str, text_rate: float = 0.0, repeat_rate: float = 0.0
) -> PlannedSample:
    rng = _sample_rng(seed, shard_id, index)
    kind = {"tiny_image": "tiny", "extreme_aspect": "extreme"}.get(fault, "normal")
    scene = sample_scene(rng, *sample_original_size(rng, kind))
    if repeat_rate > 0:  # a stream of its own, as for signs
        scene = with_repeats(_sample_rng(seed, shard_id, index, _REPEAT_STREAM), scene, repeat_rate)
    if text_rate > 0 and fault != "failed_download":
        # A stream of its own: the scene, its captions and every other sample are as without signs.
        trng = _sample_rng(seed, shard_id, index, _TEXT_STREAM)
        if trng.random() < text_rate:
            scene = with_text(trng, scene)
    true_caption = caption_en(scene, rng)
    s = PlannedSample(index, uid, fault, scene, true_caption, true_caption)
    if fault == "non_english":
        s.caption, s.language = caption_foreign(scene, rng)
    elif fault == "too_short":
        s.caption = caption_too_short(scene, rng)
    elif fault == "empty_caption":
        s.caption = caption_empty(rng)
    elif fault == "alt_largest_only":
        s.caption = caption_largest_only(scene, rng)
    elif fault == "alt_vague":
        s.caption = caption_vague(rng)
    elif fault == "alt_filename":
        s.caption = caption_filename(rng)
    elif fault == "failed_download":
        msgs, probs = zip(*DOWNLOAD_ERRORS, strict=True)
        p = np.asarray(probs) / sum(probs)
        s.error_message = str(msgs[int(rng.choice(len(msgs), p=p))])
    return s


def plan_shard(
    seed: int, shard_id: int, n: int, rates: FaultRates, text_rate: float = 0.0, repeat_rate: float = 0.0
) -> list[PlannedSample]:
    """Decide every sample of a shard: fault, scene, captions and cross-sample references.

    ``text_rate``: the share of scenes that get a word on a sign (``curate.synth.text``);
    ``repeat_rate``: the chance each later shape repeats the first one's colour and kind."""
    rng = np.random.default_rng([seed, shard_id])
    faults = [rates.pick(float(u)) for u in rng.random(n)]
    uids = [make_uid(seed, shard_id, i) for i in range(n)]
    deferred = ("swapped_caption", "near_duplicate")
    plan: list[PlannedSample | None] = [
        None if f in deferred else _fresh(seed, shard_id, i, uids[i], f, text_rate, repeat_rate)
        for i, f in enumerate(faults)
    ]
    clean = [i for i, f in enumerate(faults) if f == "none"]
    for i, f in enumerate(faults):
        if f not in deferred:
            continue
        if not clean:  # nothing to borrow from in a tiny shard: the sample stays clean
            plan[i] = _fresh(seed, shard_id, i, uids[i], "none", text_rate, repeat_rate)
            continue
        j = clean[int(rng.integers(len(clean)))]
        src = plan[j]
        assert src is not None
        if f == "swapped_caption":
            s = _fresh(seed, shard_id, i, uids[i], f, text_rate, repeat_rate)
            for _ in range(8):  # avoid borrowing a caption that happens to describe this image too
                if src.caption != s.true_caption:
                    break
                j = clean[int(rng.integers(len(clean)))]
                src = plan[j]
                assert src is not None
            s.caption, s.swapped_with = src.caption, src.uid
        else:
            srng = _sample_rng(seed, shard_id, i)
            scene = perturb_scene(srng, src.scene)
            cap = caption_en(scene, srng)
            s = PlannedSample(i, uids[i], f, scene, cap, cap, near_duplicate_of=src.uid)
        plan[i] = s
    return [p for p in plan if p is not None]


def _gt(s: PlannedSample) -> dict[str, Any]:
    scene = s.scene
    boxes = scene.shape_boxes()
    gt: dict[str, Any] = {
        "fault": s.fault,
        "shapes": [
            {"label": sh.label, "color": sh.color, "size": sh.size, "bbox": list(box)}
            for sh, box in zip(scene.shapes, boxes, strict=True)
        ],
        "background": scene.background,
    }
    if scene.text is not None:  # only then: pools without signs keep their bytes
        gt["text"] = {"word": scene.text.word, "box": list(scene.text_box() or ())}
    return {
        **gt,
        "relations": [{"subject": a, "relation": r, "object": b} for a, r, b in scene.relations],
        "scene_label": scene.shapes[scene.primary()].label,
        "true_caption": s.true_caption,
        "language": s.language,
        "near_duplicate_of": s.near_duplicate_of,
        "swapped_with": s.swapped_with,
    }


def write_shard(
    output_dir: str,
    shard_id: int,
    n: int,
    shard_size: int,
    seed: int,
    rates: FaultRates,
    text_rate: float = 0.0,
    repeat_rate: float = 0.0,
) -> dict[str, Any]:
    """Write ``NNNNNNNN.tar``, ``.parquet`` and ``_stats.json``; return counts."""
    plan = plan_shard(seed, shard_id, n, rates, text_rate, repeat_rate)
    oom = oom_sample_per_shard(shard_size)
    writer = ShardWriter(output_dir, shard_id)
    status: Counter[str] = Counter()
    successes = failed = 0
    try:
        for s in plan:
            key = compute_key(s.index, shard_id, oom)
            meta: dict[str, Any] = {
                "uid": s.uid,
                "caption": s.caption,
                "url": URL_TEMPLATE.format(uid=s.uid),
                "key": key,
                "status": None,
                "error_message": s.error_message,
                "width": None,
                "height": None,
                "original_width": None,
                "original_height": None,
                "exif": None,
                "sha256": None,
            }
            if s.fault == "failed_download":
                failed += 1
                meta["status"] = "failed_to_download"
                status[str(s.error_message)] += 1
                writer.write({**meta, "fault": s.fault}, None, None, None)
                continue
            data = render_jpeg(s.scene)
            if s.fault == "corrupt_image":
                data = corrupt_bytes(_sample_rng(seed, shard_id, s.index, 1), data)
            elif s.fault == "damaged_jpeg":
                data = damage_scan(_sample_rng(seed, shard_id, s.index, 1), data)
            successes += 1
            status["success"] += 1
            (w, h), (ow, oh) = s.scene.size, s.scene.original_size
            meta.update(
                status="success",
                width=w,
                height=h,
                original_width=ow,
                original_height=oh,
                exif="{}",
                sha256=hashlib.sha256(data).hexdigest(),
            )
            meta_json = json.dumps({**meta, "gt": _gt(s)}, indent=4)
            writer.write({**meta, "fault": s.fault}, data, s.caption, meta_json)
    finally:
        writer.close()
    write_stats(output_dir, shard_id, n, successes, failed, 0, status)
    return {
        "count": n,
        "successes": successes,
        "failed_to_download": failed,
        "faults": dict(Counter(s.fault for s in plan)),
        "texts": sum(s.scene.text is not None for s in plan if s.fault != "failed_download"),
    }

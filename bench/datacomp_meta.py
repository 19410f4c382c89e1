"""Generate DataComp-format metadata (``NNNNNNNN.parquet`` + row-aligned ``NNNNNNNN.npz``).

For benchmarks and tests of the metadata-only steps (basic, CLIP score, image-based, text-based,
subset, MetaCLIP, MoDE) at any size, without images. Each shard has DataComp's columns: ``uid``
(32 hex, unique), ``text``, ``url``, ``original_width``, ``original_height``,
``clip_b32_similarity_score``, ``clip_l14_similarity_score`` (float32) and ``face_bboxes``; the
npz holds L2-normalised ``b32_img`` / ``l14_img`` vectors drawn around ``CENTRES`` random
centres, one per topic, so clustering has structure to find. Captions are mostly English
sentences about a Zipf-distributed noun (so concept counts have MetaCLIP's long tail), with
some non-English, too-short, empty and spam ones; a few images are tiny or extremely wide.
Deterministic by seed: shard ``i`` depends only on ``(seed, i)``.

    python bench/datacomp_meta.py --output /tmp/dc --shards 4 --rows 10000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curate.synth.captions_i18n import caption_foreign  # noqa: E402
from curate.synth.scene import sample_scene  # noqa: E402

CENTRES = 50


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


NOUNS = (
    *_words(
        "dog cat car house tree flower bird horse beach mountain city street bridge boat train airplane bicycle "
        "chair table sofa bed kitchen bathroom garden river lake forest road building church castle tower "
        "woman man child girl boy baby family couple wedding dress shirt shoes hat bag watch ring necklace "
        "phone laptop camera guitar piano book cup coffee pizza cake bread salad burger fruit apple banana "
        "orange lemon strawberry tomato vegetable soup fish chicken cow sheep pig duck rabbit butterfly bee "
        "sunset sky cloud snow rain ocean wave island desert field farm barn fence door window wall roof "
        "lamp clock mirror painting poster logo map flag ball toy robot truck bus motorcycle tractor ship"
    ),
    # Multi-word concepts, as vocabularies (ImageNet-21k lemmas, MetaCLIP entries) have them.
    *("golden retriever", "coffee table", "christmas tree", "teddy bear", "ice cream", "fire truck", "living room"),
)
ADJECTIVES = _words(
    "red blue green yellow white black old new small large beautiful vintage modern wooden colorful "
    "cute happy quiet busy sunny snowy rustic elegant tiny huge bright dark"
)
TEMPLATES = (
    "a photo of a {adj} {noun}",
    "{adj} {noun} in the {place}",
    "close-up of a {noun} on a {adj} background",
    "a {adj} {noun} next to a {noun2}",
    "the {noun} and the {noun2} at the {place}",
    "stock image of a {adj} {noun}",
    "{noun} for sale, {adj} condition, free shipping",
    "an illustration of a {noun} with a {adj} {noun2}",
    "My {adj} {noun} at the {place} last summer",
    "Beautiful {noun} photographed in the {place}",
)
PLACES = ("park", "city", "countryside", "studio", "garden", "beach", "mountains", "kitchen", "market", "snow")
SHORT = ("image", "photo", "untitled", "IMG_2041", "DSC01234.JPG", "thumbnail", "pic", "dog", "sale")
SPAM = ("buy now best price cheap deals online", "click here download free", "%%%% ---- ####")
DOMAINS = ("images.example.com", "cdn.shop.example.org", "media.blog.example.net", "static.photos.example.io")


def _zipf(n: int, exponent: float = 1.1) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** exponent
    return p / p.sum()


def _caption(rng: np.random.Generator, noun: int, kind: str) -> str:
    if kind == "empty":
        return str(rng.choice(["", "", " ", "\n"]))
    if kind == "short":
        return str(rng.choice(SHORT))
    if kind == "spam":
        return str(rng.choice(SPAM))
    if kind == "foreign":
        return caption_foreign(sample_scene(rng, 640, 480), rng)[0]
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    text = template.format(
        adj=ADJECTIVES[int(rng.integers(len(ADJECTIVES)))],
        noun=NOUNS[noun],
        noun2=NOUNS[int(rng.integers(len(NOUNS)))],
        place=PLACES[int(rng.integers(len(PLACES)))],
    )
    return text[0].upper() + text[1:] if rng.random() < 0.4 else text


def _sizes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    short = rng.integers(200, 1025, n)
    aspect = rng.uniform(1.0, 2.0, n)
    kind = rng.random(n)
    tiny, extreme = kind < 0.05, (kind >= 0.05) & (kind < 0.09)
    short[tiny] = rng.integers(32, 190, int(tiny.sum()))
    aspect[extreme] = rng.uniform(3.2, 6.0, int(extreme.sum()))
    long = np.round(short * aspect).astype(np.int64)
    landscape = rng.random(n) < 0.65
    return np.where(landscape, long, short), np.where(landscape, short, long)


def _faces(rng: np.random.Generator) -> list[list[float]]:
    if rng.random() >= 0.12:
        return []
    boxes = []
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = rng.uniform(0, 0.7, 2)
        w, h = rng.uniform(0.05, 0.3, 2)
        boxes.append([float(x0), float(y0), float(min(x0 + w, 1.0)), float(min(y0 + h, 1.0))])
    return boxes


def _vectors(rng: np.random.Generator, centres: np.ndarray, topics: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Rows around their topic's centre (cosine ~0.7 to it), L2-normalised, in chunks to bound memory."""
    dim = centres.shape[1]
    out = np.empty((len(topics), dim), dtype=dtype)
    for start in range(0, len(topics), 16384):
        t = topics[start : start + 16384]
        v = centres[t] + rng.standard_normal((len(t), dim), dtype=np.float32) / np.sqrt(dim)
        out[start : start + len(t)] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def make_shard(
    out_dir: Path, index: int, rows: int, seed: int, dims: dict[str, int], dtype: np.dtype, seen: set[str]
) -> str:
    rng = np.random.default_rng([seed, index])
    uids = []
    while len(uids) < rows:
        uid = rng.bytes(16).hex()
        if uid not in seen:  # 128 random bits never collide in practice; uniqueness is still promised
            seen.add(uid)
            uids.append(uid)
    nouns = rng.choice(len(NOUNS), size=rows, p=_zipf(len(NOUNS)))
    kinds = rng.choice(["en", "foreign", "short", "empty", "spam"], size=rows, p=[0.8, 0.08, 0.06, 0.03, 0.03])
    texts = [_caption(rng, int(n), str(k)) for n, k in zip(nouns, kinds, strict=True)]
    widths, heights = _sizes(rng, rows)
    # Captions that describe their image score higher; noise and non-English score lower, as in the pool.
    fit = np.where(kinds == "en", 0.27, 0.19)
    b32 = np.clip(fit + rng.normal(0, 0.045, rows), 0.08, 0.42).astype(np.float32)
    l14 = np.clip(b32 - 0.02 + rng.normal(0, 0.02, rows), 0.06, 0.42).astype(np.float32)
    # A topic per row: its noun's cluster for described images, any cluster for the rest.
    topics = np.where(kinds == "en", nouns % CENTRES, rng.integers(0, CENTRES, rows))
    table = pa.table(
        {
            "uid": pa.array(uids, pa.string()),
            "text": pa.array(texts, pa.string()),
            "url": pa.array([f"https://{DOMAINS[int(u[0], 16) % len(DOMAINS)]}/{u[:2]}/{u}.jpg" for u in uids]),
            "original_width": pa.array(widths, pa.int64()),
            "original_height": pa.array(heights, pa.int64()),
            "clip_b32_similarity_score": pa.array(b32),
            "clip_l14_similarity_score": pa.array(l14),
            "face_bboxes": pa.array([_faces(rng) for _ in range(rows)], pa.list_(pa.list_(pa.float64()))),
        }
    )
    arrays = {}
    for key, dim in dims.items():
        centre_rng = np.random.default_rng([seed, dim, *key.encode()])  # the same centres in every shard
        centres = centre_rng.standard_normal((CENTRES, dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        arrays[key] = _vectors(rng, centres, topics, np.dtype(dtype))
    stem = out_dir / f"{index:08d}"
    pq.write_table(table, f"{stem}.parquet")
    np.savez(f"{stem}.npz", **arrays)  # uncompressed, as DataComp ships them, so readers can mmap
    return f"{stem}.parquet"


def make_datacomp_metadata(
    out_dir: str | Path,
    *,
    shards: int,
    rows_per_shard: int,
    seed: int,
    dims: dict[str, int] | None = None,
    dtype: type | np.dtype = np.float16,
) -> list[str]:
    """Write ``shards`` DataComp metadata shards of ``rows_per_shard`` rows; returns parquet paths."""
    if shards < 1 or rows_per_shard < 1:
        raise ValueError(f"shards and rows_per_shard must be >= 1, got {shards} and {rows_per_shard}")
    dims = {"b32_img": 512, "l14_img": 768} if dims is None else dims
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    return [make_shard(out, i, rows_per_shard, seed, dims, np.dtype(dtype), seen) for i in range(shards)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="directory for NNNNNNNN.parquet + NNNNNNNN.npz")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--rows", type=int, default=10000, help="rows per shard")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    args = parser.parse_args(argv)
    paths = make_datacomp_metadata(
        args.output, shards=args.shards, rows_per_shard=args.rows, seed=args.seed, dtype=np.dtype(args.dtype)
    )
    print(f"wrote {len(paths)} shards x {args.rows} rows to {args.output}")


if __name__ == "__main__":
    main()

"""CLIP scores of every node caption against its node's region (the image for the image vertex, the
box's crop for the others), stored in each caption's ``clip_scores`` as ml-gbc does: the score by
model name, and ``truncation`` when the caption filled the text encoder's context (so it was cut).

A vertex's crop is encoded once and all captions of a batch of graphs in one pass, so scoring adds
two batched forward passes per batch, not one per caption.
"""

from __future__ import annotations

from PIL import Image

from captioners.gbc_graph import GraphBuilder
from schemas.gbc import ClipScores


def score_captions(embedder, model_name: str, graphs: list[tuple[Image.Image, GraphBuilder]]) -> None:
    """Fill ``clip_scores`` of every caption of ``graphs`` ((image, builder) pairs) in place."""
    crops, texts, where = [], [], []
    for image, builder in graphs:
        width, height = image.size
        for node in builder.nodes.values():
            if not node.descs:
                continue
            left, top, right, bottom = node.box
            box = (round(left * width), round(top * height), round(right * width), round(bottom * height))
            crops.append(image.crop((box[0], box[1], max(box[2], box[0] + 1), max(box[3], box[1] + 1))))
            for caption in node.descs:
                texts.append(caption.text)
                where.append((len(crops) - 1, caption))
    if not texts:
        return
    image_emb = embedder.encode_images(crops)
    text_emb = embedder.encode_texts(texts)
    cut = embedder.fills_context(texts)
    for k, (crop, caption) in enumerate(where):
        score = float(image_emb[crop] @ text_emb[k])
        caption.clip_scores = ClipScores(scores={model_name: round(score, 4)}, truncation=cut[k])

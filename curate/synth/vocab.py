"""The closed vocabulary of the shapes world: shape kinds, named colours, sizes, backgrounds."""

from __future__ import annotations

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "rectangle",
    "ellipse",
    "star",
    "hexagon",
    "diamond",
)

# Named colours and their reference RGB; rendering jitters around these.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 32, 36),
    "orange": (242, 133, 20),
    "yellow": (240, 214, 28),
    "green": (38, 156, 60),
    "blue": (32, 78, 214),
    "purple": (124, 46, 170),
    "pink": (240, 124, 178),
    "brown": (120, 72, 34),
    "black": (22, 22, 24),
    "white": (244, 244, 240),
}

# Nominal shape extent as a fraction of the image's shorter side.
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.13, 0.19),
    "medium": (0.23, 0.31),
    "large": (0.37, 0.48),
}

BACKGROUNDS: tuple[str, ...] = (
    "plain",
    "gradient",
    "striped",
    "checkered",
    "noisy",
    "blotchy",
    "grid",
    "wavy",
)

# English noun phrases for each background in captions (chosen among for variety).
BACKGROUND_EN: dict[str, tuple[str, ...]] = {
    "plain": ("a plain, evenly colored background", "an evenly colored background"),
    "gradient": ("a background fading from one color to another", "a gradually shaded background"),
    "striped": ("a background with stripes", "a striped background with straight lines"),
    "checkered": ("a background of alternating squares", "a background with a pattern of alternating squares"),
    "noisy": ("a background with a speckled texture", "a grainy, speckled background"),
    "blotchy": ("a background with soft mottled patches", "a softly mottled background"),
    "grid": ("a background with grid lines", "a background with a grid pattern"),
    "wavy": ("a background with wavy lines", "a background with wavy stripes"),
}

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

FAULTS: tuple[str, ...] = (
    "swapped_caption",
    "non_english",
    "too_short",
    "empty_caption",
    "tiny_image",
    "extreme_aspect",
    "near_duplicate",
    "corrupt_image",
    "failed_download",
    # Alt-text as the web writes it (the image is fine, the text undersells it); last, at rate 0 by
    # default, so that pools made without them keep their bytes.
    "alt_largest_only",
    "alt_vague",
    "alt_filename",
    # Bytes overwritten inside an otherwise intact JPEG's scan: PIL decodes it without an error. Last
    # and at rate 0 by default for the same reason.
    "damaged_jpeg",
)

LANGUAGES: tuple[str, ...] = ("fr", "de", "es", "it", "pt")

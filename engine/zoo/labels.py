"""Free-text labels -> ImageNet-1k class sets, and label sets for challenges.

Closed-set classifiers answer "is this a bus?" through a label map: each label is a set of
ImageNet classes and its logit is the logsumexp over the set (see ``ClassSetHead``). The map
below covers the objects CAPTCHAs ask for; any other label is matched against ImageNet class
names, and a label that matches nothing is a :class:`LabelMapError`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

# label -> ImageNet classes, by the class's first name in timm's ImageNetInfo descriptions,
# or an inclusive index range "first..last" for the large families (dog breeds, birds).
CAPTCHA_LABEL_MAP: dict[str, tuple[str, ...]] = {
    "bicycle": ("bicycle-built-for-two", "mountain bike"),
    "boat": ("canoe", "catamaran", "fireboat", "gondola", "lifeboat", "speedboat", "yawl",
             "trimaran", "schooner", "container ship", "liner", "pirate"),
    "bridge": ("steel arch bridge", "suspension bridge", "viaduct"),
    "bus": ("school bus", "trolleybus", "minibus"),
    "car": ("sports car", "convertible", "cab", "beach wagon", "jeep", "limousine", "minivan",
            "Model T", "racer"),
    "motorcycle": ("moped", "motor scooter"),
    "mountain": ("alp", "volcano"),
    "parking meter": ("parking meter",),
    "taxi": ("cab",),
    "tractor": ("tractor", "harvester"),
    "traffic light": ("traffic light",),
    "truck": ("fire engine", "garbage truck", "pickup", "tow truck", "trailer truck",
              "moving van"),
    "airplane": ("airliner", "warplane"),
    "cat": ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"),
    "dog": ("151..268",),
    "bird": ("7..24", "80..100", "127..146"),
    "horse": ("sorrel",),
    "zebra": ("zebra",),
    "cow": ("ox",),
    "sheep": ("ram", "bighorn"),
    "elephant": ("Indian elephant", "African elephant", "tusker"),
    "bear": ("brown bear", "American black bear", "ice bear", "sloth bear"),
}

# Negatives for the binary challenge mode ("does the image contain X?").
DEFAULT_NEGATIVES: tuple[str, ...] = tuple(CAPTCHA_LABEL_MAP)


class LabelMapError(ValueError):
    """A label that maps to no ImageNet class."""


@lru_cache(maxsize=1)
def imagenet_descriptions() -> tuple[str, ...]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(1000))


def _synonyms(desc: str) -> list[str]:
    return [s.strip().lower() for s in desc.split(",")]


def _resolve_class(name: str) -> list[int]:
    if m := re.fullmatch(r"(\d+)\.\.(\d+)", name):
        return list(range(int(m[1]), int(m[2]) + 1))
    descs = imagenet_descriptions()
    key = name.lower()
    first = [i for i, d in enumerate(descs) if _synonyms(d)[0] == key]
    if first:
        return first[:1]
    raise LabelMapError(f"label map names unknown ImageNet class {name!r}")


def imagenet_classes(label: str) -> tuple[int, ...]:
    """The ImageNet-1k classes a free-text label stands for."""
    key = " ".join(label.strip().lower().replace("_", " ").split())
    if key in CAPTCHA_LABEL_MAP:
        return tuple(sorted({i for n in CAPTCHA_LABEL_MAP[key] for i in _resolve_class(n)}))
    descs = imagenet_descriptions()
    exact = [i for i, d in enumerate(descs) if key in _synonyms(d)]
    if exact:
        return tuple(exact)
    if len(key) >= 3:
        pattern = re.compile(rf"\b{re.escape(key)}s?\b")
        word = [i for i, d in enumerate(descs) if any(pattern.search(s) for s in _synonyms(d))]
        if word:
            return tuple(word)
    raise LabelMapError(
        f"label {label!r} maps to no ImageNet class: it is not in the CAPTCHA label map "
        f"({', '.join(sorted(CAPTCHA_LABEL_MAP))}) and matches no ImageNet class name. "
        f"Use one of those labels, an ImageNet class name (e.g. 'school bus'), or a "
        f"zero-shot model (open_clip:..., hf:...) that accepts any text."
    )


def class_sets(labels: Sequence[str]) -> list[tuple[int, ...]]:
    """Class sets for a label set; overlapping labels (e.g. car and taxi) are allowed."""
    return [imagenet_classes(label) for label in labels]


def binary_label_set(target: str, negatives: Sequence[str] | None = None) -> tuple[str, ...]:
    """Label set of a binary challenge: index 0 is the target, the rest are the negatives.

    A solver answers "yes, the image contains X" when label 0 wins.
    """
    negs = DEFAULT_NEGATIVES if negatives is None else tuple(negatives)
    negs = tuple(n for n in negs if n != target and not _overlaps(n, target))
    if not negs:
        raise ValueError("a binary challenge needs at least one negative label")
    return (target, *negs)


def _overlaps(a: str, b: str) -> bool:
    try:
        return bool(set(imagenet_classes(a)) & set(imagenet_classes(b)))
    except LabelMapError:
        return False

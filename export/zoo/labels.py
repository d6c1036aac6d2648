"""Free-text labels -> ImageNet-1k class sets, and label sets for challenges.

Each label is a set of ImageNet classes (its logit the logsumexp over them): from a user map
first, then the map below of what CAPTCHAs ask for, then ImageNet's class names; a label that
matches nothing is a :class:`LabelMapError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

# label -> ImageNet classes, each a name of one class in timm's ImageNetInfo descriptions or an
# inclusive index range "first..last" for the large families (dog breeds, birds).
# It covers reCAPTCHA's labels where ImageNet has them, hCaptcha's animals and objects, and the
# common scene words (person, flower, building); see UNEXPRESSIBLE for what ImageNet lacks.
CAPTCHA_LABEL_MAP: dict[str, tuple[str, ...]] = {
    # reCAPTCHA
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
    # hCaptcha's vehicles and objects
    "airplane": ("airliner", "warplane"),
    "train": ("bullet train", "electric locomotive", "steam locomotive", "passenger car",
              "freight car", "streetcar"),
    "van": ("moving van", "police van", "minivan"),
    "ambulance": ("ambulance",),
    "lighthouse": ("beacon",),
    "fountain": ("fountain",),
    "tent": ("mountain tent",),
    "dam": ("dam",),
    "umbrella": ("umbrella",),
    "chair": ("barber chair", "folding chair", "rocking chair", "throne"),
    "clock": ("analog clock", "digital clock", "wall clock"),
    "bottle": ("beer bottle", "pop bottle", "water bottle", "wine bottle", "pill bottle"),
    "cup": ("cup", "coffee mug"),
    "laptop": ("laptop",),
    "keyboard": ("computer keyboard",),
    "television": ("television", "monitor", "screen"),
    "phone": ("cellular telephone", "dial telephone"),
    "bench": ("park bench",),
    "street sign": ("street sign",),
    "mailbox": ("mailbox",),
    # hCaptcha's animals
    "cat": ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"),
    "dog": ("151..268",),
    "bird": ("7..24", "80..100", "127..146"),
    "horse": ("sorrel",),
    "zebra": ("zebra",),
    "cow": ("ox", "water buffalo", "bison"),
    "sheep": ("ram", "bighorn"),
    "elephant": ("Indian elephant", "African elephant", "tusker"),
    "bear": ("brown bear", "American black bear", "ice bear", "sloth bear"),
    "lion": ("lion",),
    "tiger": ("tiger",),
    "fox": ("red fox", "kit fox", "Arctic fox", "grey fox"),
    "wolf": ("timber wolf", "white wolf", "red wolf", "coyote"),
    "monkey": ("guenon", "patas", "baboon", "macaque", "langur", "colobus", "proboscis monkey",
               "marmoset", "capuchin", "howler monkey", "titi", "spider monkey",
               "squirrel monkey"),
    "pig": ("hog",),
    "rabbit": ("wood rabbit", "Angora", "hare"),
    "squirrel": ("fox squirrel",),
    "panda": ("giant panda", "lesser panda"),
    "camel": ("Arabian camel",),
    "kangaroo": ("wallaby",),
    "goat": ("ibex",),
    "duck": ("drake", "red-breasted merganser"),
    "chicken": ("cock", "hen"),
    "owl": ("great grey owl",),
    "eagle": ("bald eagle",),
    "penguin": ("king penguin",),
    "fish": ("tench", "goldfish", "anemone fish", "rock beauty", "lionfish", "puffer",
             "sturgeon", "gar", "eel", "coho"),
    "frog": ("bullfrog", "tree frog", "tailed frog"),
    "turtle": ("loggerhead", "leatherback turtle", "mud turtle", "terrapin", "box turtle"),
    "snake": ("52..68",),
    "butterfly": ("admiral", "ringlet", "monarch", "cabbage butterfly", "sulphur butterfly",
                  "lycaenid"),
    "bee": ("bee",),
    "spider": ("black and gold garden spider", "barn spider", "garden spider", "wolf spider",
               "tarantula", "black widow"),
    # scenes and people (ImageNet has few classes for them: coarse, but real)
    "person": ("groom", "scuba diver", "ballplayer"),
    "flower": ("daisy", "yellow lady's slipper", "rapeseed", "pot"),
    "building": ("church", "mosque", "palace", "monastery", "castle", "barn", "boathouse",
                 "greenhouse", "library", "cinema", "planetarium", "prison", "restaurant",
                 "bakery", "barbershop", "butcher shop", "confectionery", "grocery store",
                 "tobacco shop", "toyshop", "shoe shop", "dome", "stupa", "triumphal arch",
                 "bell cote", "cliff dwelling", "water tower"),
}

# Other words for the labels above.
LABEL_SYNONYMS: dict[str, str] = {
    "bike": "bicycle", "bicycles": "bicycle", "motorbike": "motorcycle", "motorbus": "bus",
    "aeroplane": "airplane", "plane": "airplane", "cars": "car", "automobile": "car",
    "cab": "taxi", "traffic lights": "traffic light", "boats": "boat", "ship": "boat",
    "mountains": "mountain", "hill": "mountain", "people": "person", "man": "person",
    "woman": "person", "flowers": "flower", "buildings": "building", "house": "building",
    "puppy": "dog", "kitten": "cat", "tv": "television", "cattle": "cow", "birds": "bird",
}

# CAPTCHA labels that no ImageNet-1k class stands for: an ImageNet classifier cannot answer them.
UNEXPRESSIBLE: frozenset[str] = frozenset({
    "crosswalk", "crosswalks", "zebra crossing", "stairs", "stair", "staircase", "chimney",
    "chimneys", "hydrant", "hydrants", "fire hydrant", "fire hydrants", "palm", "palms",
    "palm tree", "palm trees", "tree", "trees", "giraffe", "deer", "sidewalk", "road",
    "seaplane", "helicopter", "skyscraper", "windmill", "sky", "grass", "water",
})

LabelMap = dict[str, tuple[int, ...]]  # label -> ImageNet class indices (resolved)


class LabelMapError(ValueError):
    """A label that maps to no ImageNet class."""


@lru_cache(maxsize=1)
def imagenet_descriptions() -> tuple[str, ...]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(1000))


def _synonyms(desc: str) -> list[str]:
    return [s.strip().lower() for s in desc.split(",")]


def _key(label: str) -> str:
    return " ".join(label.strip().lower().replace("_", " ").split())


def imagenet_classes(label: str, label_map: LabelMap | None = None) -> tuple[int, ...]:
    """The ImageNet-1k classes a free-text label stands for (``label_map`` first)."""
    key = _key(label)
    if label_map:
        for k, classes in label_map.items():
            if k == label or _key(k) == key:
                return tuple(classes)
    key = LABEL_SYNONYMS.get(key, key)
    if key in CAPTCHA_LABEL_MAP:
        return tuple(sorted({i for n in CAPTCHA_LABEL_MAP[key]
                             for i in resolve_imagenet_class(n, "CAPTCHA_LABEL_MAP")}))
    if key in UNEXPRESSIBLE:
        raise LabelMapError(
            f"ImageNet has no class for {label!r}: ImageNet classifiers (effnet-lite*, timm:...) "
            f"cannot answer it. Use a solver that knows it, as a solver spec (onnx:SPEC.json, "
            f"see `advx solver init`), or a zero-shot model (open_clip:..., hf:...) that reads "
            f"any text; or map it yourself with --label-map FILE.")
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
        f"Use one of those labels, an ImageNet class name (e.g. 'school bus'), a --label-map "
        f"FILE, a solver spec (onnx:SPEC.json) or a zero-shot model (open_clip:..., hf:...) "
        f"that accepts any text."
    )


def class_sets(labels: Sequence[str], label_map: LabelMap | None = None
               ) -> list[tuple[int, ...]]:
    """Class sets for a label set; overlapping labels (e.g. car and taxi) are allowed."""
    return [imagenet_classes(label, label_map) for label in labels]


def resolve_imagenet_class(entry: str | int, where: str) -> list[int]:
    """One entry of a user label map: an index, "first..last", or a class name (any of its
    synonyms, case-insensitive); an ambiguous name is an error listing the candidates."""
    if ((isinstance(entry, int) and not isinstance(entry, bool))
            or (isinstance(entry, str) and entry.strip().isdigit())):
        i = int(entry)
        if not 0 <= i < 1000:
            raise LabelMapError(f"{where}: ImageNet class index {i} is outside 0..999")
        return [i]
    if not isinstance(entry, str) or not entry.strip():
        raise LabelMapError(f"{where}: {entry!r} is not an ImageNet class name or index")
    if m := re.fullmatch(r"\s*(\d+)\s*\.\.\s*(\d+)\s*", entry):
        a, b = int(m[1]), int(m[2])
        if not 0 <= a <= b < 1000:
            raise LabelMapError(f"{where}: range {entry!r} must lie within 0..999")
        return list(range(a, b + 1))
    descs = imagenet_descriptions()
    key = _key(entry)
    hits = [i for i, d in enumerate(descs) if key in _synonyms(d)]
    if not hits:
        import difflib

        names = [s for d in descs for s in _synonyms(d)]
        close = difflib.get_close_matches(key, names, n=3, cutoff=0.7)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise LabelMapError(f"{where}: {entry!r} is no ImageNet class name{hint} (names "
                            f"come from timm.data.ImageNetInfo; an index 0..999 also works)")
    if len(hits) > 1:
        cands = "; ".join(f"{i} = {descs[i]}" for i in hits)
        raise LabelMapError(f"{where}: {entry!r} names {len(hits)} ImageNet classes ({cands}); "
                            f"write the index of the one you mean instead, e.g. {hits[0]} or "
                            f"\"{hits[0]}\" (an entry is a class name that names one class, "
                            f"an index 0..999, or a range \"first..last\")")
    return hits


def parse_label_map(data: object, source: str = "label map") -> LabelMap:
    """``{"label": ["ImageNet class name or index", ...]}`` -> label -> class indices."""
    if not isinstance(data, dict) or not data:
        raise LabelMapError(f"{source}: expected a JSON object {{\"label\": [\"ImageNet "
                            f"class name or index\", ...]}}")
    out: LabelMap = {}
    for label, entries in data.items():
        if not isinstance(label, str) or not label.strip():
            raise LabelMapError(f"{source}: labels must be non-empty strings, got {label!r}")
        items = list(entries) if isinstance(entries, list | tuple) else [entries]
        if not items:
            raise LabelMapError(f"{source}: {label!r} lists no ImageNet class")
        classes: set[int] = set()
        for entry in items:
            classes.update(resolve_imagenet_class(entry, f"{source}: {label!r}"))
        out[label.strip()] = tuple(sorted(classes))
    return out


def load_label_map(source: str | Path | Mapping | None) -> LabelMap | None:
    if source is None:
        return None
    if isinstance(source, Mapping):
        return parse_label_map(dict(source))
    path = Path(source).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise LabelMapError(f"--label-map {path}: cannot read it ({e.strerror or e})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LabelMapError(f"--label-map {path}: not valid JSON ({e})") from e
    return parse_label_map(data, f"--label-map {path}")


def binary_label_set(target: str, negatives: Sequence[str] | None = None,
                     label_map: LabelMap | None = None) -> tuple[str, ...]:
    """Label set of a binary challenge: index 0 is the target, the rest are the negatives (by
    default the CAPTCHA label map's labels); a solver answers "yes, the image contains X" when
    label 0 wins."""
    negs = tuple(CAPTCHA_LABEL_MAP if negatives is None else negatives)
    negs = tuple(n for n in negs if _key(n) != _key(target)
                 and not _overlaps(n, target, label_map))
    if not negs:
        raise ValueError("a binary challenge needs at least one negative label")
    return (target, *negs)


def _overlaps(a: str, b: str, label_map: LabelMap | None = None) -> bool:
    try:
        return bool(set(imagenet_classes(a, label_map)) & set(imagenet_classes(b, label_map)))
    except LabelMapError:
        return False

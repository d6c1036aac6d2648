"""A real reCAPTCHA solver as surrogate and verifier, with and without geometry EOT (not part
of the test command; CPU, about a minute per run).

The solver: TesseraNet from azcrawlerpy-recaptcha-google 2.0.3 on PyPI (not redistributed here).
Its spec is the README's worked example ("Schema v1"), saved beside the graph:

    .venv/bin/pip download --no-deps azcrawlerpy-recaptcha-google==2.0.3 -d /tmp/tess
    python3 -m zipfile -e /tmp/tess/azcrawlerpy_recaptcha_google-2.0.3-py3-none-any.whl /tmp/tess/x
    SPEC=/tmp/tess/x/azcrawlerpy_recaptcha_google/recaptcha.json   # the README's JSON, here
    .venv/bin/python benchmarks/real_solver.py $SPEC on /tmp/tess
    .venv/bin/python benchmarks/real_solver.py $SPEC off /tmp/tess   # the presets without it
    .venv/bin/python benchmarks/real_solver.py $SPEC p0.5 /tmp/tess  # another geometry share
    advx eval /tmp/tess/out-on --models onnx:$SPEC --label-set motorcycle,bus,car \
        --transforms robust
    .venv/bin/python benchmarks/real_solver.py $SPEC on /tmp/tess '{"eot_focus": 0}' uniform
        # HardenConfig fields as JSON, and a name: writes OUT/out-on-uniform

12 tiles of 100 px (a 2x3 grid over the motorcycle of each stereo_motorcycle view), "select all
motorcycles" against bus and car, eps 4/255, at most 30 steps. Writes the clean tiles to
``OUT/clean/motorcycle`` and the hardened ones to ``OUT/out-MODE/motorcycle``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def tiles() -> list[np.ndarray]:
    import skimage.data as sd
    from PIL import Image

    out = []
    for im in sd.stereo_motorcycle()[:2]:
        h, w = im.shape[:2]
        s = int(0.3 * h)
        for y, x in ((0.2, 0.15), (0.2, 0.4), (0.2, 0.65), (0.45, 0.15), (0.45, 0.4), (0.45, 0.65)):
            y0, x0 = int(y * h), int(x * w)
            crop = np.ascontiguousarray(im[y0 : y0 + s, x0 : x0 + s])
            out.append(np.asarray(Image.fromarray(crop).resize((100, 100), Image.BICUBIC)))
    return out


def main() -> int:
    spec, mode, root = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    overrides = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    name = f"out-{mode}-{sys.argv[5]}" if len(sys.argv) > 5 else f"out-{mode}"
    from PIL import Image

    from advx import HardenConfig, Hardener

    if mode == "off":
        from efficacy import drop_geometry_draws  # benchmarks/, beside this script

        drop_geometry_draws()
    elif mode.startswith("p"):  # p0.5: a drawn geometry for that share of the gradients
        from efficacy import set_geometry_p

        set_geometry_p(float(mode[1:]))
    images = tiles()
    solver = f"onnx:{spec}"
    hardener = Hardener(["motorcycle", "bus", "car"], surrogates=[solver], verifiers=[solver],
                        config=HardenConfig(eps=4, steps=30, **overrides))
    results = hardener.run(images, ["motorcycle"] * len(images))
    clean, out = root / "clean" / "motorcycle", root / name / "motorcycle"
    for d in (clean, out):
        d.mkdir(parents=True, exist_ok=True)
    for i, (im, r) in enumerate(zip(images, results, strict=True)):
        Image.fromarray(im).save(clean / f"{i:02d}.png")
        Image.fromarray(r.image).save(out / f"{i:02d}.png")
    ssim = [r.ssim for r in results]
    fooled = sum(r.fooled for r in results)
    print(f"geometry EOT {mode} {overrides}: engine fooled {fooled} / {len(results)}, "
          f"SSIM mean {np.mean(ssim):.3f} min {min(ssim):.3f}, "
          f"steps {np.mean([r.steps for r in results]):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One small case per registered task, for the task-generic tests (tests/test_tasks.py): how
to write a folder of its inputs, the models to harden them with, its options, a short config
and one service request. A task registered without a case here fails
``test_every_registered_task_has_a_case``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from advx.engine.config import HardenConfig


@dataclass
class Case:
    write: Callable[[Path], Path | None]  # writes the inputs; returns their labels CSV (None:
    #                                       the task's folder layout)
    models: Callable[[Path], tuple[list, list]]  # (surrogates, verifiers) by name, their files
    #                                              written to the folder given
    config: HardenConfig
    options: dict[str, Any] = field(default_factory=dict)
    # a truth the models cannot take, and the HTTP status a request with it gets
    bad_truth: tuple[str, int] | None = None
    needs: str | None = None  # a module the case needs (skipped without it)


LABEL_SET = ("Bicycle", "Bus", "Car")


def _labels_models(folder: Path) -> tuple[list, list]:
    """A tiny foreign solver (closed set), attacked with its own gradients and verified by its
    own graph: a run and ``advx eval`` answer through the same onnxruntime session."""
    from tiny import save_tiny_solver

    spec = folder / "solver" / "bgr.json"
    if not spec.exists():
        save_tiny_solver(folder / "solver", "bgr", seed=3)
    return [f"onnx:{spec}"], [f"onnx:{spec}"]


def _labels_write(folder: Path) -> None:
    """Six noisy tiles: four labelled as the solver answers them clean, two otherwise (it
    answers those wrong clean: counted apart)."""
    import torch
    from PIL import Image

    from advx.export.zoo import create_verifier

    (name,), _ = _labels_models(folder.parent)
    solver = create_verifier(name, LABEL_SET)
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(6)]
    x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 255
    answers = [LABEL_SET[int(i)] for i in solver(x).argmax(1)]
    for i, (px, answer) in enumerate(zip(tiles, answers, strict=True)):
        label = answer if i < 4 else next(lab for lab in LABEL_SET if lab != answer)
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(px).save(folder / label / f"{i}.png")


def _text_write(folder: Path) -> Path:
    from advx.engine.tasks.text.draw import write_captcha_folder

    return write_captcha_folder(folder, 3, seed=5)


def _text_models(folder: Path) -> tuple[list, list]:
    return ["captcha-whisperer"], ["captcha-whisperer"]


def _cells_write(folder: Path) -> Path:
    from advx.engine.tasks.cells.draw import write_click_folder

    return write_click_folder(folder, 3, seed=2)


def _cells_models(folder: Path) -> tuple[list, list]:
    return ["ddddocr-det"], ["ddddocr-det"]


CASES: dict[str, Case] = {
    "labels": Case(_labels_write, _labels_models,
                   HardenConfig(steps=4, verify_every=2, transforms="jpeg", batch_size=2),
                   options={"label_set": LABEL_SET}, bad_truth=("horse", 400)),
    "text": Case(_text_write, _text_models,
                 HardenConfig(steps=3, verify_every=3, batch_size=2),
                 bad_truth=("AB~", 422), needs="captcha_whisperer"),
    "cells": Case(_cells_write, _cells_models,
                  HardenConfig(steps=3, verify_every=3, batch_size=2),
                  bad_truth=('{"label": "bus", "boxes": [[0, 0, 9, 9]]}', 422), needs="ddddocr"),
}


def case(task: str) -> Case:
    c = CASES[task]
    if c.needs:
        pytest.importorskip(c.needs)
    return c

"""What the text task returns for each captcha, and its built-in solvers."""

from __future__ import annotations

from dataclasses import dataclass

from ...results import HardenResult

# the built-in OCR solvers (advx.export.zoo.ocr), every one installed by default
DEFAULT_SOLVERS = ("ddddocr", "ddddocr-beta", "captcha-whisperer", "ppocr-v4-rec")
DEMO_CAPTCHAS = 8  # captchas `advx demo --task text` draws (seed 0)


@dataclass(kw_only=True)
class TextResult(HardenResult):
    task = "text"
    text: str  # the truth
    read_before: dict[str, dict[str, str]]  # verifier -> view -> its reading of the clean item
    read_after: dict[str, dict[str, str]]  # verifier -> view -> its reading as delivered
    cer_after: dict[str, dict[str, float]]  # verifier -> view -> character error rate

    def to_record(self) -> dict:
        d = super().to_record()
        d["cer_after"] = {k: {w: round(float(c), 4) for w, c in v.items()}
                          for k, v in self.cer_after.items()}
        return d


__all__ = ["DEFAULT_SOLVERS", "DEMO_CAPTCHAS", "TextResult"]

"""What the labels task returns for each tile."""

from __future__ import annotations

from dataclasses import dataclass

from ...results import HardenResult


@dataclass(kw_only=True)
class LabelResult(HardenResult):
    task = "labels"
    label: str  # true label
    target: str | None  # decoy label of a targeted run
    predictions_before: dict[str, str]  # model -> top label on the clean image
    predictions_after: dict[str, str]  # model -> top label on the delivered image
    selected_before: dict[str, list[str]]  # model -> labels it selects (its own decision rule)
    selected_after: dict[str, list[str]]
    probabilities_before: dict[str, dict[str, float]]  # multi-label model -> P(label)
    probabilities_after: dict[str, dict[str, float]]
    margins: dict[str, float]  # verifier -> min over its deciding views of its fooling margin
    margins_by_view: dict[str, dict[str, float]]  # verifier -> view -> fooling margin
    selected_by_view_before: dict[str, dict[str, list[str]]]  # verifier -> view -> selected
    selected_by_view_after: dict[str, dict[str, list[str]]]

    def to_record(self) -> dict:
        d = super().to_record()
        d["margins"] = {k: round(float(v), 4) for k, v in self.margins.items()}
        d["margins_by_view"] = {k: {w: round(float(m), 4) for w, m in v.items()}
                                for k, v in self.margins_by_view.items()}
        return d


__all__ = ["LabelResult"]

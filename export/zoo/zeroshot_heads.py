"""The transformers open-vocabulary detectors and segmenter as torch heads with gradients to
the pixels, and their image processors mirrored in torch.

A head takes ``pixel_values`` (what the model's image processor gives) and text queries
encoded once by :meth:`encode`, and returns the raw outputs its decoder reads
(:mod:`advx.export.solver.detect`):

- :class:`OwlHead` (OWL-ViT, OWLv2): one candidate per image patch, ``logits`` [N, A, C] (one
  per query, sigmoid) and ``pred_boxes`` [N, A, 4] (centre x, y, w, h in [0, 1] of the input);
- :class:`ClipSegHead` (CLIPSeg): a logit map per query [N, C, h, w] (sigmoid per pixel);
- :class:`GroundingDinoHead` (Grounding DINO): each query prompted alone (``"bus."``, as its
  model card writes them) so that a label's answer does not depend on the other labels of a
  batch; its decoder queries become candidates of that label only.

:class:`ProcessorPreprocess` does in torch what the model's transformers image processor does
to an 8-bit image, so that the attack sees the solver's own input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

UNKNOWN_LOGIT = -1.0e4  # a Grounding DINO candidate's logit for the labels it was not asked


def _pooled(out: Any) -> torch.Tensor:
    # transformers < 5 returns the projected features, >= 5 a model output holding them
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def _text_features(head: nn.Module, clip: nn.Module, queries: Sequence[str]) -> torch.Tensor:
    """[C, P] a CLIP-style text tower's pooled, projected features of the queries."""
    tok = head.tokenizer(list(queries), padding=True, truncation=True, return_tensors="pt")
    tok = {k: v.to(_device(head)) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
    return _pooled(clip.get_text_features(**tok))


class OwlHead(nn.Module):
    """OWL-ViT / OWLv2 (``*ForObjectDetection``): class logits of every patch's box against
    the query embeddings (the model's ``forward`` without its text pass, which :meth:`encode`
    does once per query set)."""

    kind = "detr"
    outputs = ("logits", "pred_boxes")

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer

    def encode(self, queries: Sequence[str]) -> torch.Tensor:
        """[C, P] the projected text embeddings of the queries."""
        return _text_features(self, self.model.base_model, queries)

    def forward(self, pixel_values: torch.Tensor, queries: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        feature_map = self.model.image_embedder(pixel_values=pixel_values)[0]  # [N, h, w, D]
        n, h, w, d = feature_map.shape
        feats = feature_map.reshape(n, h * w, d)
        logits = self.model.class_predictor(feats, queries.to(feats)[None].expand(n, -1, -1))[0]
        return logits, self.model.box_predictor(feats, feature_map)


class ClipSegHead(nn.Module):
    """CLIPSeg (``CLIPSegForImageSegmentation``): a logit map per query. Its ``forward`` runs
    the CLIP vision encoder under ``torch.no_grad()`` (frozen in training), so no gradient
    reaches the pixels through it: this head calls the encoder and the decoder itself, as that
    ``forward`` does, with the gradient kept."""

    kind = "heatmap"
    outputs = ("logits",)

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer

    def encode(self, queries: Sequence[str]) -> torch.Tensor:
        """[C, P] the conditional embeddings of the queries."""
        return _text_features(self, self.model.clip, queries)

    def forward(self, pixel_values: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        m = self.model
        vision = m.clip.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=True,
                                     output_hidden_states=True)
        n, c = pixel_values.shape[0], queries.shape[0]  # shapes: symbolic in an ONNX export
        # hidden_states[0] holds the embeddings: layer i's output is at i + 1; each image is
        # decoded once per query (image-major)
        acts = [vision.hidden_states[i + 1][:, None].expand(-1, c, -1, -1).flatten(0, 1)
                for i in m.extract_layers]
        cond = queries.to(pixel_values)[None].expand(n, -1, -1).flatten(0, 1)
        heat = m.decoder(acts, cond).logits
        return heat.reshape(n, c, *heat.shape[-2:])


class GroundingDinoHead(nn.Module):
    """Grounding DINO (``GroundingDinoForObjectDetection``): per query, a pass prompted with it
    alone; a decoder query's score for the label is its best token logit over the prompt (what
    ``post_process_grounded_object_detection`` scores a box by). Candidates: the decoder queries
    of every prompt, each scoring only its prompt's label."""

    kind = "detr"
    outputs = ("logits", "pred_boxes")

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer

    def encode(self, queries: Sequence[str]) -> list[dict[str, torch.Tensor]]:
        """Per query its tokenised prompt: lower case, ending with a dot, as the model card
        asks."""
        return [dict(self.tokenizer([f"{q.lower().strip().rstrip('.')}."], return_tensors="pt"))
                for q in queries]

    def forward(self, pixel_values: torch.Tensor, queries: Sequence[dict[str, torch.Tensor]]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        n, c = pixel_values.shape[0], len(queries)
        logits, boxes = [], []
        for i, tok in enumerate(queries):
            tok = {k: v.to(pixel_values.device).expand(n, -1) for k, v in tok.items()}
            out = self.model(pixel_values=pixel_values, **tok)
            best = out.logits.amax(-1)  # [N, Q]: masked token positions are -inf
            z = best.new_full((*best.shape, c), UNKNOWN_LOGIT)
            z[..., i] = best
            logits.append(z)
            boxes.append(out.pred_boxes)
        return torch.cat(logits, 1), torch.cat(boxes, 1)


class ProcessorPreprocess(nn.Module):
    """Images [N, 3, H, W] in [0, 1] -> ``pixel_values``, as the model's transformers image
    processor (its torchvision backend) makes them from the 8-bit image, with gradients:

    - ``squash`` (OWL-ViT, CLIPSeg's ViT processor): resize the 8-bit image to ``size``
      (antialiased; the result is 8-bit again: rounded, straight through), normalise;
    - ``square`` (OWLv2): values in [0, 1], padded with 0 at the bottom and right to a square,
      blurred (Gaussian, sigma (factor - 1) / 2) and resized bilinearly, normalised;
    - ``shortest`` (Grounding DINO): as ``squash``, to the shortest edge ``size`` keeping the
      aspect ratio within the longest edge.
    """

    def __init__(self, processor: Any, fit: str) -> None:
        super().__init__()
        from torchvision.transforms import InterpolationMode

        self.fit, size = fit, processor.size
        self.size = ((int(size["shortest_edge"]), int(size["longest_edge"])) if fit == "shortest"
                     else (int(size["height"]), int(size["width"])))
        self.mode = {2: InterpolationMode.BILINEAR, 3: InterpolationMode.BICUBIC}.get(
            int(processor.resample), InterpolationMode.BILINEAR)
        self.register_buffer("mean", torch.tensor(processor.image_mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(processor.image_std).view(1, 3, 1, 1),
                             persistent=False)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The model's input size for an image of ``height`` x ``width``."""
        if self.fit != "shortest":
            return self.size
        from transformers.image_transforms import get_size_with_aspect_ratio

        return tuple(get_size_with_aspect_ratio((height, width), *self.size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        import torchvision.transforms.v2.functional as tvF

        x = images.float()
        size = list(self.input_size(*x.shape[-2:]))
        if self.fit == "square":
            h, w = x.shape[-2:]
            side = max(h, w)
            x = tvF.pad(x, [0, 0, side - w, side - h], fill=0.0)
            # in float32, as the processor computes them
            sigma = ((torch.tensor(side) / torch.tensor(size[0]) - 1) / 2).clamp(min=0)
            if sigma > 0:
                k = int(2 * torch.ceil(3 * sigma).int() + 1)
                x = tvF.gaussian_blur(x, [k, k], [sigma.item()] * 2)
            x = tvF.resize(x, size, interpolation=self.mode, antialias=False)
        else:
            x = _resize8(x * 255, size, self.mode.value) / 255
        return (x - self.mean) / self.std


def _resize8(x: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """torchvision's resize of an 8-bit image on the CPU, in float with gradients: antialiased,
    its width first, then its height, each pass rounded to 8 bits (straight through), as its
    native uint8 kernel does (within 2 levels; one float pass differs by up to 12 levels where
    one side shrinks and the other grows)."""
    import torch.nn.functional as F

    for hw in ((x.shape[-2], size[1]), (size[0], size[1])):
        if tuple(x.shape[-2:]) != hw:
            x = F.interpolate(x, size=hw, mode=mode, antialias=True, align_corners=False)
            x = x + (x.round().clamp(0, 255) - x).detach()
    return x


HEADS: dict[str, type[nn.Module]] = {"owl": OwlHead, "clipseg": ClipSegHead,
                                      "grounding_dino": GroundingDinoHead}

__all__ = ["HEADS", "UNKNOWN_LOGIT", "ClipSegHead", "GroundingDinoHead", "OwlHead",
           "ProcessorPreprocess"]

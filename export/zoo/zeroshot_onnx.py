"""ONNX exports of the open-vocabulary detectors' image side, which their verifiers run.

The graph takes ``pixel_values`` [n, 3, H, W] (the image processor's output, at the model's
fixed size) and ``queries`` [c, P] (the text embeddings, computed in torch once per label set),
so one export serves every label set; it returns the head's raw outputs (OWL: ``logits`` and
``pred_boxes``; CLIPSeg: ``logits``). Each export is checked by onnx.checker and then against
the torch head on random inputs: probabilities within :data:`SCORE_ATOL`, else
:class:`~advx.export.onnx.spec.ParityError` names the worst difference.

Grounding DINO has no export (``ZeroShotArch.onnx``): the TorchScript exporter has no
``aten::isin`` (its text attention masks are built with it) and the dynamo exporter needs
onnxscript, not installed; its verifier runs the torch module.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..files import cache_root
from ..onnx.runtime import make_session
from ..onnx.spec import ExportError, ParityError

log = logging.getLogger(__name__)

SCORE_ATOL = 1e-3  # parity: probabilities (sigmoid of the logits) of onnxruntime against torch
OPSET = 17
_LOCK = threading.Lock()


class OnnxNet:
    """A head's exported image side in onnxruntime, called as the torch head is."""

    def __init__(self, path: Path, outputs: tuple[str, ...], *, cuda: bool = False) -> None:
        self.path, self.outputs = path, outputs
        self.session = make_session(path, "fp32", cuda=cuda)

    def __call__(self, pixel_values: torch.Tensor, queries: torch.Tensor
                 ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        got = self.session.run(list(self.outputs), {
            "pixel_values": pixel_values.detach().float().cpu().numpy(),
            "queries": queries.detach().float().cpu().numpy()})
        out = tuple(torch.from_numpy(np.asarray(g, dtype=np.float32)) for g in got)
        return out if len(out) > 1 else out[0]


def _sigmoid(x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    # the first output holds the logits (OWL's boxes are compared through the kept detections)
    return torch.sigmoid(x[0] if isinstance(x, tuple) else x)


def export_head(net: nn.Module, size: tuple[int, int], path: Path, *, name: str) -> float:
    """Write the image side of head ``net`` (model ``name``, input ``size`` (H, W)) to ``path``
    and check it; the worst difference of the probabilities (raises ExportError /
    ParityError)."""
    import onnx

    h, w = size
    g = torch.Generator().manual_seed(0)
    px = torch.randn(2, 3, h, w, generator=g)
    queries = net.encode(["a photo of a cat", "bus", "traffic light"]).float().cpu()
    device = next(net.parameters()).device
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        net.cpu()
        # the tracer warns of the sizes it fixes (the input's: fixed by the processor)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (px, queries[:2]), str(tmp), dynamo=False,
                              opset_version=OPSET, input_names=["pixel_values", "queries"],
                              output_names=list(net.outputs), do_constant_folding=True,
                              dynamic_axes={"pixel_values": {0: "n"}, "queries": {0: "c"}})
            onnx.checker.check_model(str(tmp), full_check=True)
            # other batch and query counts than the traced ones
            px = torch.rand(3, 3, h, w, generator=g) * 4 - 2
            want = _sigmoid(net(px, queries))
        got = _sigmoid(OnnxNet(tmp, net.outputs)(px, queries))
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"exporting {name} failed: {type(e).__name__}: "
                          f"{str(e)[:300]}") from e
    finally:
        net.to(device)
    worst = float((got - want).abs().max())
    if worst > SCORE_ATOL:
        tmp.unlink(missing_ok=True)
        raise ParityError(f"{name}: onnxruntime's scores differ from torch's by up to "
                          f"{worst:.3g} (tolerance {SCORE_ATOL})")
    tmp.replace(path)
    return worst


def onnx_net(net: nn.Module, size: tuple[int, int], version: object, *, name: str,
             cuda: bool = False) -> OnnxNet | None:
    """Head ``net``'s export, made once per model ``version`` (its source and files) in advx's
    cache folder; None where the export fails its checks (logged: it verifies in torch)."""
    key = hashlib.sha256(repr((version, OPSET)).encode()).hexdigest()[:16]
    path = cache_root() / "zeroshot" / key / "model.onnx"
    with _LOCK:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                worst = export_head(net, size, path, name=name)
            except ExportError as e:
                log.warning("warning: %s verifies in torch: %s", name, e)
                return None
            log.info("%s: exported to %s (scores within %.2g of torch)", name, path, worst)
    return OnnxNet(path, net.outputs, cuda=cuda)


__all__ = ["SCORE_ATOL", "OnnxNet", "export_head", "onnx_net"]

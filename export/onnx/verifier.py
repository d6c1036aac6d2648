"""Score images with an exported classifier through onnxruntime (CUDA where present, else CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..zoo.model import PreprocessCfg, Resize
from .manifest import MODEL_FILE, Manifest, load_manifest
from .runtime import available_providers, check_interface, cpu_run_size, make_session


class OnnxVerifier:
    """images [N, 3, H, W] in [0, 1] (torch, any device) -> float32 label logits (torch, CPU),
    on CUDA where present (the input bound from the tensor's memory, no host copy)."""

    def __init__(self, export_dir: str | Path, *, device: str = "auto") -> None:
        self.path = Path(export_dir)
        self.manifest: Manifest = load_manifest(self.path)
        m = self.manifest
        self.name, self.labels = m.source_model, m.labels
        self.resize = Resize(PreprocessCfg(m.input_size, tuple(m.mean), tuple(m.std),
                                           m.interpolation, m.crop_pct))
        use_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available_providers()
        if device == "cuda" and not use_cuda:
            raise RuntimeError("device='cuda' asked for but onnxruntime has no CUDA provider; "
                               "install the extra: pip install 'advx[gpu]'")
        dir_ = self.path if self.path.is_dir() else self.path.parent
        self.session = make_session(dir_ / MODEL_FILE, m.precision, cuda=use_cuda)
        check_interface(self.session, m.input_name, m.output_name, m.batch_axis, self.path)
        self.device = "cuda" if use_cuda else "cpu"

    def __repr__(self) -> str:
        return f"OnnxVerifier({self.name!r}, {self.manifest.precision}, {self.device})"

    def __call__(self, images: torch.Tensor, geometry=None) -> torch.Tensor:
        """Logits of ``images`` (any size); ``geometry`` replaces the export's own resize and
        crop (see :class:`~advx.export.zoo.model.Resize`)."""
        x = self.resize(images.detach().float(), geometry).contiguous()
        if self.device == "cuda" and x.is_cuda:
            return self._run_bound(x)
        arr = x.cpu().numpy()
        step = cpu_run_size(arr.shape)
        outs = [self.session.run([self.manifest.output_name],
                                 {self.manifest.input_name: arr[i : i + step]})[0]
                for i in range(0, max(1, len(arr)), step)]
        return torch.from_numpy(np.concatenate(outs) if len(outs) > 1 else outs[0])

    def _run_bound(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty((x.shape[0], len(self.labels)), dtype=torch.float32, device=x.device)
        torch.cuda.current_stream(x.device).synchronize()  # ORT reads x on its own stream
        binding = self.session.io_binding()
        dev_id = x.device.index or 0
        binding.bind_input(self.manifest.input_name, "cuda", dev_id, np.float32, tuple(x.shape),
                           x.data_ptr())
        binding.bind_output(self.manifest.output_name, "cuda", dev_id, np.float32,
                            tuple(out.shape), out.data_ptr())
        self.session.run_with_iobinding(binding)
        return out.cpu()

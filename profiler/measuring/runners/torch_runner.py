"""Eager PyTorch: the reference runtime (perf_counter on CPU, CUDA events on GPU).

It times the PyTorch module a key names (rebuilt from the registry), not the ONNX file.
"""

from __future__ import annotations

from typing import Any

import torch

from profiler.errors import SetupError
from profiler.measuring.devices import Device
from profiler.measuring.export import module_for_key
from profiler.measuring.protocol import Protocol
from profiler.measuring.runners.base import (
    LocalRunner,
    MeasureRequest,
    MeasureResult,
    host_fingerprint,
    library_versions,
)
from profiler.measuring.timing import time_calls


class TorchRunner(LocalRunner):
    name = "torch"

    def __init__(self, device: Device):
        self.device = device
        if device.torch_device == "cuda" and not torch.cuda.is_available():
            raise SetupError(f"device {device.name!r} asks for torch CUDA, but torch.cuda.is_available() is False "
                               f"(torch {torch.__version__}); use torch-cpu or a CUDA build of torch")
        self.dev = torch.device(device.torch_device)
        if device.torch_device == "cpu" and device.threads > 0:
            torch.set_num_threads(device.threads)

    def fingerprint(self) -> dict[str, Any]:
        fp = {**host_fingerprint(), "versions": library_versions(), "runtime": "torch",
              "torch_device": self.device.torch_device, "threads": torch.get_num_threads()}
        if self.dev.type == "cuda":
            fp["gpu"] = torch.cuda.get_device_name(0)
        return fp

    def measure(self, request: MeasureRequest, protocol: Protocol) -> MeasureResult:
        try:
            module, shape = module_for_key(request.key)
            module = module.to(self.dev)
            x = torch.randn(*shape, device=self.dev)
            with torch.inference_mode():
                if self.dev.type == "cuda":
                    samples, calls = self._cuda_samples(module, x, protocol)
                else:
                    samples, calls = time_calls(lambda: module(x), protocol.warmup_s, protocol.min_samples,
                                                protocol.min_seconds, protocol.max_seconds,
                                                protocol.calls_per_sample, protocol.target_sample_ms,
                                                limit_s=protocol.key_timeout_s)
            return MeasureResult(request.key, tuple(samples), calls)
        except Exception as e:
            return MeasureResult.failed(request.key, e)

    def _cuda_samples(self, module: Any, x: torch.Tensor, protocol: Protocol) -> tuple[list[float], int]:
        # calls per sample and stopping rule from the shared loop (synchronised wall clock), then CUDA events
        def call() -> None:
            module(x)
            torch.cuda.synchronize()

        _, calls = time_calls(call, protocol.warmup_s, 2, 0.0, protocol.max_seconds, protocol.calls_per_sample,
                              protocol.target_sample_ms)
        samples: list[float] = []
        total_ms = 0.0
        while (len(samples) < protocol.min_samples or total_ms < protocol.min_seconds * 1000) and \
                total_ms < protocol.max_seconds * 1000:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                module(x)
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
            total_ms += ms
            samples.append(ms / calls)
        return samples, calls

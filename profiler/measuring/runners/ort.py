"""onnxruntime runners: CPU, and CUDA with io-binding. A device that asks for CUDA never silently gets the CPU."""

from __future__ import annotations

from typing import Any

import numpy as np

from profiler.errors import UserError
from profiler.measuring.devices import Device
from profiler.measuring.protocol import Protocol
from profiler.measuring.runners.base import (
    LocalRunner,
    MeasureRequest,
    MeasureResult,
    host_fingerprint,
    library_versions,
)
from profiler.measuring.timing import time_calls

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}


class ProviderMissing(UserError, RuntimeError):
    pass


class OrtRunner(LocalRunner):
    name = "onnxruntime"
    max_sessions = 32  # sessions kept between visits (interleaved rounds come back to the same keys)

    def __init__(self, device: Device):
        import onnxruntime as ort

        self.ort = ort
        self.device = device
        available = ort.get_available_providers()
        if device.provider == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise ProviderMissing(
                    f"device {device.name!r} asks for onnxruntime's CUDAExecutionProvider, but this onnxruntime "
                    f"offers only {', '.join(available)}; install onnxruntime-gpu (and CUDA) or pick a CPU device")
            self.providers = ["CUDAExecutionProvider"]
        else:
            self.providers = ["CPUExecutionProvider"]
        self._calls: dict[str, Any] = {}

    def session_options(self) -> Any:
        so = self.ort.SessionOptions()
        so.intra_op_num_threads = self.device.threads
        so.inter_op_num_threads = 1
        so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = getattr(self.ort.GraphOptimizationLevel,
                                              _OPT_LEVELS[self.device.graph_optimization])
        so.log_severity_level = 3
        return so

    def fingerprint(self) -> dict[str, Any]:
        return {**host_fingerprint(), "versions": library_versions(), "runtime": "onnxruntime",
                "provider": self.providers[0], "threads": self.device.threads,
                "graph_optimization": self.device.graph_optimization}

    def measure(self, request: MeasureRequest, protocol: Protocol) -> MeasureResult:
        try:
            call = self._call_for(request)
            samples, calls = time_calls(call, protocol.warmup_s, protocol.min_samples, protocol.min_seconds,
                                        protocol.max_seconds, protocol.calls_per_sample, protocol.target_sample_ms,
                                        limit_s=protocol.key_timeout_s)
            return MeasureResult(request.key, tuple(samples), calls)
        except Exception as e:  # a failure is a value: one bad op never ends a sweep
            return MeasureResult.failed(request.key, e)

    def _call_for(self, request: MeasureRequest) -> Any:
        """The timed call of a request's model: a session and its input, cached by (path, shape)."""
        cache_key = f"{request.onnx_path}|{request.input_shape}"
        if cache_key in self._calls:
            return self._calls[cache_key]
        call = self._new_call(request)
        if len(self._calls) >= self.max_sessions:
            self._calls.pop(next(iter(self._calls)))
        self._calls[cache_key] = call
        return call

    def close(self) -> None:
        self._calls.clear()

    def _new_call(self, request: MeasureRequest) -> Any:
        sess = self.ort.InferenceSession(str(request.onnx_path), self.session_options(), providers=self.providers)
        used = sess.get_providers()
        if used[0] != self.providers[0]:
            raise RuntimeError(f"session runs on {used[0]}, not {self.providers[0]}")
        x = np.random.default_rng(0).standard_normal(request.input_shape).astype(np.float32)
        name = sess.get_inputs()[0].name
        if self.providers[0] == "CUDAExecutionProvider":
            binding = sess.io_binding()
            binding.bind_ortvalue_input(name, self.ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
            for out in sess.get_outputs():
                binding.bind_output(out.name, "cuda", 0)

            def call() -> None:
                sess.run_with_iobinding(binding)
                binding.synchronize_outputs()
        else:
            feed = {name: x}

            def call() -> None:
                sess.run(None, feed)

        return call

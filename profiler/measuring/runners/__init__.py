"""Runner factory: one protocol, one constructor per runtime."""

from __future__ import annotations

from profiler.measuring.devices import Device
from profiler.measuring.runners.base import LocalRunner, MeasureRequest, MeasureResult, Runner


def make_runner(device: Device) -> Runner:
    """The runner for a device entry. Raises with a one-line message when the runtime cannot serve it here."""
    if device.runtime == "onnxruntime":
        from profiler.measuring.runners.ort import OrtRunner

        return OrtRunner(device)
    if device.runtime == "torch":
        from profiler.measuring.runners.torch_runner import TorchRunner

        return TorchRunner(device)
    if device.runtime == "tvm":
        from profiler.measuring.runners.tvm_runner import make_tvm_runner

        return make_tvm_runner(device)  # in a child process: a crash in TVM becomes an error row
    if device.runtime == "onnxruntime-ssh":
        from profiler.measuring.runners.ssh_runner import SshRunner

        return SshRunner(device)
    raise NotImplementedError(f"device {device.name!r}: runtime {device.runtime!r} is not available in this build")


__all__ = ["LocalRunner", "MeasureRequest", "MeasureResult", "Runner", "make_runner"]

"""The in-process runtimes: onnxruntime CPU and eager torch, on real exports."""

import dataclasses

import pytest

from profiler.measuring.devices import load_devices
from profiler.measuring.export import export_key
from profiler.measuring.protocol import Protocol
from profiler.measuring.runners import MeasureRequest, make_runner
from profiler.spaces.space import get_space

FAST = Protocol(warmup_s=0.01, min_samples=4, min_seconds=0.01, retries=0, target_sample_ms=1.0)


@pytest.fixture(scope="module")
def keys():
    space = get_space("fbnet-cifar:width=0.25")
    return [k for k in space.candidate_keys() if "|k3_e3|" in k][:3]


@pytest.mark.parametrize("device", ["cpu-1t", "torch-cpu"])
def test_local_runners_time_real_ops(device, keys, tmp_path):
    dev = dataclasses.replace(load_devices()[device], threads=1)
    runner = make_runner(dev)
    reqs = [MeasureRequest(k, export_key(k, tmp_path).path, export_key(k, tmp_path).input_shape) for k in keys]
    results = list(runner.measure_many(reqs, FAST))
    assert [r.key for r in results] == keys
    for r in results:
        assert r.ok, r.error
        assert len(r.samples_ms) >= 4 and all(s > 0 for s in r.samples_ms)
        assert r.calls_per_sample >= 1
    fp = runner.fingerprint()
    assert fp["runtime"] == dev.runtime and fp["cores"] >= 1 and "torch" in fp["versions"]


def test_a_broken_model_is_an_error_value_not_an_exception(tmp_path, keys):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx model")
    runner = make_runner(load_devices()["cpu-1t"])
    r = runner.measure(MeasureRequest(keys[0], bad, (1, 3, 32, 32)), FAST)
    assert not r.ok and r.error and "\n" not in r.error

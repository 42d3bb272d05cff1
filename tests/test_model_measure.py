"""hwprof measure-model as onnxruntime_perf_test users expect: threads, shapes for dynamic axes, repeats/seconds,
p50/p90/p99/min and a noisy flag."""

import json
import warnings

import pytest
import torch

from profiler.measuring.model_measure import model_timing, onnx_input_shape, run_protocol
from profiler.measuring.protocol import Protocol


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    m = _Tiny().eval()
    x = torch.randn(1, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation chatter
        torch.onnx.export(m, (x,), str(d / "static.onnx"), input_names=["input"], opset_version=17, dynamo=False)
        torch.onnx.export(m, (x,), str(d / "dynamic.onnx"), input_names=["input"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}})
    return d


def test_repeats_give_exactly_that_many_single_runs(models, hwprof):
    r = hwprof("measure-model", models / "static.onnx", "--device", "cpu", "--threads", "1", "--repeats", "7", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["n"] == 7 and info["calls_per_sample"] == 1 and info["threads"] == 1
    assert info["min_ms"] <= info["p50_ms"] <= info["p90_ms"] <= info["p99_ms"] <= info["max_ms"]
    assert info["noisy"] == (info["cv"] > info["cv_threshold"])
    r = hwprof("measure-model", models / "static.onnx", "--threads", "1", "--seconds", "0.2")
    assert r.exit_code == 0, r.output
    assert "p50 " in r.output and "p99 " in r.output and "min " in r.output and "threads 1" in r.output


def test_shape_sets_dynamic_axes(models, hwprof):
    dyn = models / "dynamic.onnx"
    r = hwprof("measure-model", dyn, "--threads", "1", "--repeats", "3")
    assert r.exit_code == 2
    assert "dynamic shape batchx3xheightxwidth; pass --shape batch=SIZE" in r.output
    for shape, expect in ((["batch=2", "height=8", "width=12"], [2, 3, 8, 12]), (["input:1x3x20x20"], [1, 3, 20, 20]),
                          (["4x3x8x8"], [4, 3, 8, 8])):
        args = [a for s in shape for a in ("--shape", s)]
        r = hwprof("measure-model", dyn, "--threads", "1", "--repeats", "3", "--json", *args)
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["input_shape"] == expect


@pytest.mark.parametrize("args,fragment", [
    (["--shape", "1x4x16x16"], "axis 1 of input 'input' is fixed at 3, not 4"),
    (["--shape", "1x3x16"], "has 4 axes, the shape gives 3"),
    (["--shape", "channels=3"], "has no dynamic axis 'channels'"),
    (["--shape", "data:1x3x16x16"], "the model's input is 'input', not 'data'"),
    (["--shape", "big"], "expected a shape like 1x3x224x224"),
    (["--repeats", "3", "--seconds", "1"], "give --repeats or --seconds, not both"),
    (["--repeats", "0"], "--repeats 0: must be >= 1"),
])
def test_bad_options_are_one_line_errors(models, args, fragment, hwprof):
    r = hwprof("measure-model", models / "static.onnx", *args)
    assert r.exit_code == 2 and fragment in r.output, r.output


def test_timing_statistics_and_noisy_flag():
    t = model_timing([1.0] * 99 + [2.0], cv_threshold=0.05)
    assert (t.min_ms, t.p50_ms, t.max_ms, t.n) == (1.0, 1.0, 2.0, 100)
    # p99 interpolates between the 99th and 100th run (numpy's linear rule: 1.0 + 0.01 * (2.0 - 1.0))
    assert t.p99_ms == pytest.approx(1.01) and t.cv == pytest.approx(0.099, abs=0.002)  # std 0.0995 / mean 1.01
    assert t.noisy  # one slow run in 100: CV 10 % > 5 %
    assert not model_timing([1.0, 1.01, 0.99], cv_threshold=0.05).noisy
    p = run_protocol(Protocol(), repeats=5)
    assert (p.min_samples, p.min_seconds, p.calls_per_sample, p.retries) == (5, 0.0, 1, 0)
    p = run_protocol(Protocol(), seconds=2.0)
    assert (p.min_seconds, p.max_seconds, p.calls_per_sample) == (2.0, 2.0, 1)


def test_input_shape_of_a_static_model(models):
    assert onnx_input_shape(models / "static.onnx") == (1, 3, 16, 16)

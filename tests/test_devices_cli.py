import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from profiler.cli import app
from profiler.measuring.devices import DeviceError, load_devices

runner = CliRunner()


def test_project_devices_yaml_has_the_required_entries():
    devs = load_devices()
    for name in ("cpu", "cpu-1t", "gpu", "torch-cpu", "torch-cuda", "rpi4", "rpi4-ort"):
        assert name in devs
    assert devs["cpu"].runtime == "onnxruntime" and devs["cpu"].threads == 0
    assert devs["cpu-1t"].threads == 1 and devs["gpu"].provider == "cuda"
    assert devs["rpi4"].rpc is not None and devs["rpi4-ort"].ssh is not None


@pytest.mark.parametrize("text,match", [
    ("devices:\n  cpu:\n    runtime: onnxruntime\n    thread: 2\n", r"device 'cpu': unknown field 'thread'"),
    ("devices:\n  cpu:\n    runtime: tensorrt\n", r"device 'cpu'.runtime: unknown runtime 'tensorrt'"),
    ("devices:\n  cpu:\n    runtime: onnxruntime\n    threads: two\n", r"device 'cpu'.threads: 'two' is not an integer"),
    ("devices:\n  cpu:\n    threads: 2\n", r"device 'cpu': missing field 'runtime'"),
    ("devices:\n  b:\n    runtime: tvm\n", r"device 'b': runtime tvm needs field 'target'"),
    ("devices:\n  b:\n    runtime: onnxruntime-ssh\n    ssh: {host: h}\n", r"device 'b'.ssh: missing field 'user'"),
    ("devices: [1, 2\n", r"not valid YAML"),
    ("devices:\n  c:\n    runtime: onnxruntime\n    protocol: {warmup_s: -1}\n", r"protocol.warmup_s: -1 must be >= 0"),
])
def test_malformed_devices_yaml_one_line_error_exit_2(tmp_path, text, match):
    p = tmp_path / "devices.yaml"
    p.write_text(text)
    with pytest.raises(DeviceError, match=match):
        load_devices(p)
    r = runner.invoke(app, ["measure", "--device", "cpu", "--devices", str(p)])
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and str(p) in lines[0]


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "devices.yaml"
    p.write_text("devices: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(DeviceError, match="not valid YAML"):
        load_devices(p)


def test_cli_devices_spaces_and_unknown_device():
    r = runner.invoke(app, ["devices", "--json"])
    assert r.exit_code == 0 and "rpi4" in json.loads(r.output)
    r = runner.invoke(app, ["spaces"])
    assert r.exit_code == 0 and "fbnet-cifar" in r.output
    r = runner.invoke(app, ["measure", "--device", "nope"])
    assert r.exit_code == 2 and "no device 'nope'" in r.output


def test_cli_measure_then_show(tmp_path, monkeypatch):
    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))
    p = tmp_path / "devices.yaml"
    p.write_text("devices:\n  fast:\n    runtime: onnxruntime\n    threads: 1\n    protocol: "
                 "{warmup_s: 0.01, min_samples: 3, min_seconds: 0.01, retries: 0}\n")
    out = tmp_path / "t.csv"
    r = runner.invoke(app, ["measure", "--device", "fast", "--devices", str(p), "--space", "fbnet-cifar",
                            "--only", "k3_e1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out)
    assert len(df) == 12 and set(df["op"]) == {"k3_e1"} and (df["median_ms"] > 0).all()
    r = runner.invoke(app, ["show", str(out), "--json"])
    info = json.loads(r.output)
    assert info["counts"]["error"] == 0 and info["device"] == "fast" and len(info["slowest"]) == 10
    r = runner.invoke(app, ["show", str(tmp_path / "missing.csv")])
    assert r.exit_code == 2 and "no such table" in r.output


def test_cuda_device_without_cuda_provider_is_a_clear_error():
    r = runner.invoke(app, ["measure", "--device", "gpu", "--only", "k3_e1"])
    assert r.exit_code == 2
    assert "CUDAExecutionProvider" in r.output and "onnxruntime-gpu" in r.output

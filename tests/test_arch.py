"""Architecture JSON: exact round-trip, one-line errors, keys and predictions from the table, ONNX export."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from profiler.latency.tables import load_table
from profiler.spaces.arch import (
    Arch,
    ArchError,
    count_flops,
    export_arch,
    load_arch,
    load_weights,
    make_arch,
    onnx_arch,
    save_arch,
    save_weights,
)
from profiler.spaces.network import build_network
from profiler.spaces.ops import count_params
from profiler.spaces.space import get_space

SPACES = ("fbnet-cifar:input_size=16,width=0.25", "darts-3ops:C=8,cells=5")


def random_choices(space, seed=0):
    rng = random.Random(seed)
    return [rng.choice(layer.choices) for layer in space.layers]


@pytest.mark.parametrize("spec", SPACES)
def test_round_trip_exact(spec, tmp_path):
    space = get_space(spec)
    arch = make_arch(space, random_choices(space), control={"kappa": 0.1234567891234, "S": [0.25, 0.75]},
                     source={"derived": "test"})
    assert Arch.from_json(json.loads(arch.dumps())) == arch
    path = save_arch(arch, tmp_path / "a.json")
    again = load_arch(path)
    assert again == arch
    assert again.dumps() == arch.dumps()  # byte-identical when written again
    assert again.choices == tuple(random_choices(space))
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("spec", SPACES)
def test_params_flops_keys_match_network(spec):
    space = get_space(spec)
    ch = random_choices(space, 3)
    arch = make_arch(space, ch)
    net = build_network(space, ch)
    assert arch.params == count_params(net)
    assert arch.flops == count_flops(net, space.input_shape) > 0
    assert sorted(arch.keys()) == sorted(space.arch_keys(ch))
    assert arch.predicted_ms is None and arch.table is None


def test_prediction_from_table(small_tables):
    spec = SPACES[0]
    table = load_table(small_tables[spec])
    space = get_space(spec)
    ch = random_choices(space, 1)
    arch = make_arch(space, ch, table)
    assert arch.predicted_ms == pytest.approx(table.predict_ms(space.arch_keys(ch)))
    assert arch.table.device == "cpu" and arch.table.space == spec and len(arch.table.fingerprint_hash) == 16
    assert Arch.from_json(arch.to_json()) == arch
    several = dataclasses.replace(arch, predicted_ms_by_device={"cpu": 0.5, "cpu-1t": 0.7})  # hwnas derive, 2 tables
    assert Arch.from_json(several.to_json()) == several


def test_table_of_other_space_refused(small_tables):
    table = load_table(small_tables[SPACES[1]])
    space = get_space(SPACES[0])
    with pytest.raises(ArchError, match="is for space"):
        make_arch(space, random_choices(space), table)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.update(schema="hwnas-arch/0"), "schema"),
    (lambda d: d["layers"][2].update(op="k9_e9"), r"layers\[2\]\.op = 'k9_e9' is not one of"),
    (lambda d: d["layers"].pop(), "has 21 entries"),
    (lambda d: d["space"].update(name="nope"), "unknown space"),
    (lambda d: d.update(params="many"), "'params'"),
    (lambda d: d.update(predicted_ms=-1.0), "predicted_ms"),
    (lambda d: d.update(predicted_ms_by_device={"cpu": -1.0}), "predicted_ms_by_device"),
    (lambda d: d["layers"][0].update(keys=["v1|x"]), r"layers\[0\]\.keys do not match"),
    (lambda d: d.pop("flops"), "'flops' is missing"),
])
def test_malformed_file_one_line_error(tmp_path, mutate, match):
    space = get_space(SPACES[0])
    data = make_arch(space, random_choices(space)).to_json()
    mutate(data)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(data))
    with pytest.raises(ArchError, match=match) as e:
        load_arch(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_not_json_and_missing_file(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(ArchError, match="not valid JSON"):
        load_arch(p)
    with pytest.raises(ArchError, match="no such architecture file"):
        load_arch(tmp_path / "missing.json")


@pytest.mark.parametrize("spec", SPACES[:1])  # the DARTS network exports too, but takes ~15 s of CI
def test_export_with_weights_matches_torch(spec, tmp_path):
    space = get_space(spec)
    arch = make_arch(space, random_choices(space, 5))
    torch.manual_seed(7)
    net = arch.build()
    with torch.no_grad():  # non-default weights and BN statistics, so loading them matters
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    w = save_weights(net, tmp_path / "w.safetensors")
    path, err = export_arch(arch, tmp_path / "m.onnx", w)
    assert err < 1e-4
    assert onnx_arch(path) == arch
    x = torch.randn(1, *space.input_shape)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = net.eval()(x).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_weights_loader_rejects_mismatch(tmp_path):
    space = get_space(SPACES[0])
    a = make_arch(space, ["k3_e6"] * len(space.layers))
    b = make_arch(space, ["skip"] + ["k3_e6"] * (len(space.layers) - 1))
    w = save_weights(a.build(), tmp_path / "a.safetensors")
    with pytest.raises(ArchError, match="do not fit"):
        load_weights(b.build(), w)
    torch.save(a.build().state_dict(), tmp_path / "a.pt")  # the plain state_dict format loads too
    load_weights(a.build(), tmp_path / "a.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArchError, match="cannot read weights"):
        load_weights(a.build(), tmp_path / "bad.safetensors")


def test_measure_model_cli(small_tables, tmp_path):
    from profiler.cli import app

    spec = SPACES[0]
    table = load_table(small_tables[spec])
    space = get_space(spec)
    arch = make_arch(space, random_choices(space, 2), table)
    path, _ = export_arch(arch, tmp_path / "m.onnx")
    r = CliRunner().invoke(app, ["measure-model", str(path), "--device", "cpu", "--table", str(small_tables[spec]),
                                 "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["median_ms"] > 0 and info["predicted_ms"] == pytest.approx(arch.predicted_ms)
    r = CliRunner().invoke(app, ["measure-model", str(tmp_path / "none.onnx")])
    assert r.exit_code == 2 and "no such ONNX model" in r.output

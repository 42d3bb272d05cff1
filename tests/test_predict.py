"""hwprof predict: an architecture's latency from tables, raw and calibrated, without measuring."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from profiler.latency.calibrate import write_calibration
from profiler.latency.formats import import_table
from profiler.latency.tables import Row, TableWriter, load_table
from profiler.measuring.export import export_module
from profiler.measuring.model_measure import export_network
from profiler.spaces.arch import export_arch, make_arch, save_arch
from profiler.spaces.space import get_space

OFA_LUT = Path(__file__).parent / "data" / "ofa_note10_224_lookup_table.yaml"
SMALL = "ofa-mbv3:input_size=32,width=0.25,num_classes=10"
CALIB = {"version": 1, "model": "scale+offset", "stat": "median", "scale": 1.1, "scale_by_op": {}, "offset_ms": -0.5,
         "fit": {"n_test": 100, "held_out_before": {"mape_pct": 29.1}, "held_out_after": {"mape_pct": 2.1}}}


def _table(spec: str, path: Path) -> Path:
    """A table with made-up latencies for ``spec`` (prediction logic only)."""
    space = get_space(spec)
    rng = np.random.default_rng(0)
    meta = {"schema_version": 1, "key_version": 1, "device": "cpu", "space": space.spec, "batch": 1}
    with TableWriter(path, meta, fresh=True) as w:
        for key in space.candidate_keys():
            m = float(rng.uniform(0.01, 1.0))
            w.append(Row(key, m, m, m, m, 0.0, 0.0, 0, 5, 1, 1, "ok"))
    return path


def test_predict_arch_json_raw_then_calibrated(tmp_path, hwprof):
    space = get_space("ofa-mbv3")
    import_table(OFA_LUT, "ofa", space, "note10", tmp_path / "ofa.csv")
    table = load_table(tmp_path / "ofa.csv")
    choices = [layer.choices[i % len(layer.choices)] for i, layer in enumerate(space.layers)]
    arch = save_arch(make_arch(space, choices), tmp_path / "arch.json")
    raw = table.predict_ms(space.arch_keys(choices))
    r = hwprof("predict", arch, "--table", tmp_path / "ofa.csv")
    assert r.exit_code == 0, r.output
    assert f"raw {raw:.4f} ms; calibrated: none" in r.output and "imported ofa" in r.output
    write_calibration(tmp_path / "ofa.csv", CALIB)
    r = hwprof("predict", arch, "--table", tmp_path / "ofa.csv", "--json")
    assert r.exit_code == 0, r.output
    p = json.loads(r.stdout)["predictions"][0]
    assert p["raw_ms"] == pytest.approx(raw)
    assert p["calibrated_ms"] == pytest.approx(1.1 * raw - 0.5)
    assert p["calibration_model"] == "scale+offset" and p["held_out"]["after"]["mape_pct"] == 2.1
    r = hwprof("predict", arch, "--table", tmp_path / "ofa.csv")
    assert "model scale+offset, held-out MAPE 2.1 % on 100 networks (raw 29.1 %)" in r.output


def test_predict_several_tables_and_one_of_another_space(tmp_path, hwprof):
    space = get_space(SMALL)
    t1, t2 = _table(SMALL, tmp_path / "a.csv"), _table("fbnet-cifar:width=0.25", tmp_path / "b.csv")
    choices = [layer.choices[-1] for layer in space.layers]
    arch = save_arch(make_arch(space, choices), tmp_path / "arch.json")
    r = hwprof("predict", arch, "--table", t1, "--table", t2)
    assert r.exit_code == 0, r.output
    assert f"raw {load_table(t1).predict_ms(space.arch_keys(choices)):.4f} ms" in r.output
    assert "cannot predict: table is for space 'fbnet-cifar:width=0.25'" in r.output
    r = hwprof("predict", arch, "--table", t2)
    assert r.exit_code == 2


def test_predict_onnx_with_and_without_metadata(tmp_path, hwprof):
    space = get_space(SMALL)
    table = _table(SMALL, tmp_path / "t.csv")
    choices = [layer.choices[0] for layer in space.layers]
    keys = space.arch_keys(choices)
    expected = f"raw {load_table(table).predict_ms(keys):.4f} ms"
    model, _ = export_arch(make_arch(space, choices), tmp_path / "m.onnx")  # hwnas export: hwnas_arch_json
    r = hwprof("predict", model, "--table", table)
    assert r.exit_code == 0 and expected in r.output, r.output
    net, _ = export_network(space, choices, tmp_path / "nets")  # hwprof's network export: hwnas_space + hwnas_arch
    r = hwprof("predict", net, "--table", table)
    assert r.exit_code == 0 and expected in r.output, r.output
    plain = tmp_path / "plain.onnx"
    export_module(torch.nn.Conv2d(3, 4, 3), (1, 3, 8, 8), plain)
    r = hwprof("predict", plain, "--table", table)
    assert r.exit_code == 2
    assert "no hwnas metadata (metadata_props 'hwnas_arch_json'); predict needs an architecture JSON" in r.output
    assert len(r.output.strip().splitlines()) == 1
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    r = hwprof("predict", tmp_path / "junk.onnx", "--table", table)
    assert r.exit_code == 2 and "not a readable ONNX model" in r.output
    r = hwprof("predict", tmp_path / "none.json", "--table", table)
    assert r.exit_code == 2 and "no such file" in r.output

"""Peer LUT formats: round trips and hand-written files in each format."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from profiler.cli import app
from profiler.formats import FormatError, export_table, import_table, ofa_key
from profiler.measure import table_meta
from profiler.protocol import Protocol
from profiler.spaces import get_space
from profiler.tables import Row, TableWriter, load_table

CHAIN = "fbnet-cifar:width=0.25"
CELL = "darts-3ops:C=8,cells=5"


class _FakeRunner:
    def fingerprint(self):
        return {"runtime": "synthetic"}


def synthetic_table(spec: str, path: Path, seed: int = 0) -> Path:
    """A table with made-up latencies (format logic only; real measurements are tested elsewhere)."""
    from profiler.devices import Device

    space = get_space(spec)
    rng = np.random.default_rng(seed)
    meta = table_meta(Device("cpu", "onnxruntime"), space, _FakeRunner(), Protocol(), 1)
    with TableWriter(path, meta, fresh=True) as w:
        for key in space.candidate_keys():
            m = float(rng.uniform(0.01, 2.0))
            w.append(Row(key, m, m * 0.9, m * 1.1, m, m * 0.02, 0.02, 0, 20, 1, 1, "ok"))
    return path


def medians(path: Path) -> dict[str, float]:
    return {k: r["median_ms"] for k, r in load_table(path).rows.items()}


@pytest.mark.parametrize("fmt,spec", [("ofa", CHAIN), ("nni", CHAIN), ("nni", CELL), ("fbnet-grid", CHAIN)])
def test_round_trip(tmp_path, fmt, spec):
    src = synthetic_table(spec, tmp_path / "t.csv")
    table = load_table(src)
    exp = export_table(table, fmt, tmp_path / "peer.txt")
    rep = import_table(tmp_path / "peer.txt", fmt, get_space(spec), "phone", tmp_path / "back.csv")
    back, orig = medians(tmp_path / "back.csv"), medians(src)
    expressible = [k for k in orig if k not in exp.unexpressible]
    assert rep.imported == len(expressible) == len(back)
    assert sorted(rep.missing) == sorted(exp.unexpressible)
    for k in expressible:
        assert back[k] == pytest.approx(orig[k], rel=1e-5)
    t = load_table(tmp_path / "back.csv")
    assert t.device == "phone" and t.meta["imported"]["format"] == fmt
    assert t.meta["imported"]["missing"] == rep.missing
    if fmt == "ofa":  # grouped blocks and skips have no OFA name; plain inverted residuals and fixed layers do
        ops = {k.split("|")[1] for k in exp.unexpressible}
        assert ops == {"k3_e1_g2", "k5_e1_g2", "skip"}
    else:
        assert exp.unexpressible == []


def test_ofa_hand_written_file(tmp_path):
    space = get_space(CHAIN)
    # first searchable layer of the space: 8 -> 8 channels at 32x32, stride 1 (has a residual: idskip 1)
    site = space.layers[0].sites[0]
    assert (site.c_in, site.c_out, site.stride, site.input_hw) == (8, 8, 1, (32, 32))
    lut = {
        "expanded_conv-input:32x32x8-output:32x32x8-expand:6-kernel:5-stride:1-idskip:1":
            {"count": 50, "mean": 0.42, "std": 0.01},
        "Conv-input:32x32x3-output:32x32x8": {"count": 50, "mean": 0.05, "std": 0.002},
        "expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:5-stride:2-idskip:0":
            {"count": 50, "mean": 3.0, "std": 0.1},
    }
    src = tmp_path / "lut.yaml"
    src.write_text(yaml.safe_dump(lut))
    rep = import_table(src, "ofa", space, "pixel1", tmp_path / "t.csv")
    assert rep.imported == 2
    assert rep.unused == ["expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:5-stride:2-idskip:0"]
    t = load_table(tmp_path / "t.csv")
    assert t.latency_ms(site.key("k5_e6")) == pytest.approx(0.42)
    assert t.rows[site.key("k5_e6")]["std_ms"] == pytest.approx(0.01)
    assert t.latency_ms(space.fixed[0].key()) == pytest.approx(0.05)
    assert ofa_key(site.key("k5_e6")) in lut


def test_nni_lines_without_channels_match_by_shape_and_flag_ambiguity(tmp_path):
    space = get_space(CHAIN)
    l0 = space.layers[0].sites[0]  # 1x8x32x32 -> 8, s1 and L01 1x8x32x32 -> 8, s2: same op+shape, two keys
    l1 = space.layers[1].sites[0]
    assert (l1.c_in, *l1.input_hw) == (l0.c_in, *l0.input_hw)
    stem = space.fixed[0]
    lines = [
        {"op_name": "stem", "op_data_shape": [1, 3, 32, 32], "op_dtype": "float32", "op_latency": 0.07},
        {"op_name": "k3_e3", "op_data_shape": [1, 8, 32, 32], "op_dtype": "float32", "op_latency": 0.2},
        {"op_name": "k3_e3", "op_data_shape": [1, 8, 32, 32], "op_dtype": "float32", "op_latency": 0.3,
         "c_out": l1.c_out, "stride": l1.stride},
        {"op_name": "conv_7x7", "op_data_shape": [1, 3, 224, 224], "op_dtype": "float32", "op_latency": 1.0},
    ]
    src = tmp_path / "lut.txt"
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rep = import_table(src, "nni", space, "cpu", tmp_path / "t.csv")
    assert rep.imported == 2
    assert len(rep.ambiguous) == 1 and rep.ambiguous[0].startswith("k3_e3")
    assert len(rep.unused) == 1 and rep.unused[0].startswith("conv_7x7")
    t = load_table(tmp_path / "t.csv")
    assert t.latency_ms(stem.key()) == pytest.approx(0.07)
    assert t.latency_ms(l1.key("k3_e3")) == pytest.approx(0.3)
    assert l0.key("k3_e3") in rep.missing


def test_fbnet_grid_hand_written(tmp_path):
    space = get_space(CHAIN)
    rows = [" ".join(str(0.1 * (i + 1) + 0.01 * j) for j in range(9)) for i in range(22)]
    src = tmp_path / "speed.txt"
    src.write_text("# 22 x 9 latency grid\n" + "\n".join(rows) + "\n")
    rep = import_table(src, "fbnet-grid", space, "cpu", tmp_path / "t.csv")
    assert rep.imported == len({s.key(op) for layer in space.layers for s in layer.sites for op in layer.choices})
    assert sorted(rep.missing) == sorted(s.key() for s in space.fixed)  # the plain grid has no fixed layers
    t = load_table(tmp_path / "t.csv")
    assert t.latency_ms(space.layers[0].sites[0].key("k3_e3")) == pytest.approx(0.12)


@pytest.mark.parametrize("content,fragment", [
    ("0.1 0.2\n", "rows"),
    ("\n".join(["0.1 0.2 0.3"] * 22), "line 1: 3 values, expected 9"),
    ("\n".join(["0.1 x 0.3 0.1 0.1 0.1 0.1 0.1 0.1"] * 22), "line 1"),
])
def test_fbnet_grid_errors_name_the_line(tmp_path, content, fragment):
    src = tmp_path / "speed.txt"
    src.write_text(content)
    with pytest.raises(FormatError, match=fragment):
        import_table(src, "fbnet-grid", get_space(CHAIN), "cpu", tmp_path / "t.csv")
    assert not (tmp_path / "t.csv").exists()


def test_fbnet_grid_refuses_cell_spaces(tmp_path):
    table = load_table(synthetic_table(CELL, tmp_path / "t.csv"))
    with pytest.raises(FormatError, match="chain spaces only"):
        export_table(table, "fbnet-grid", tmp_path / "g.txt")
    assert not (tmp_path / "g.txt").exists()


def test_ofa_bad_entry_is_one_line_error(tmp_path):
    src = tmp_path / "lut.yaml"
    src.write_text("Conv-input:32x32x3-output:32x32x8: {count: 1, mean: fast}\n")
    with pytest.raises(FormatError, match="needs a numeric 'mean'"):
        import_table(src, "ofa", get_space(CHAIN), "cpu", tmp_path / "t.csv")


def test_cli_import_export(tmp_path):
    src = synthetic_table(CHAIN, tmp_path / "t.csv")
    runner = CliRunner()
    r = runner.invoke(app, ["export", str(src), "--format", "nni", "--out", str(tmp_path / "lut.txt")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["import", str(tmp_path / "lut.txt"), "--format", "nni", "--space", CHAIN,
                            "--device", "cpu", "--out", str(tmp_path / "back.csv")])
    assert r.exit_code == 0, r.output
    assert medians(tmp_path / "back.csv") == pytest.approx(medians(src), rel=1e-5)
    r = runner.invoke(app, ["import", str(tmp_path / "lut.txt"), "--format", "tflite", "--space", CHAIN,
                            "--device", "cpu", "--out", str(tmp_path / "x.csv")])
    assert r.exit_code == 2 and "unknown format 'tflite'" in r.output
    assert not (tmp_path / "x.csv").exists()

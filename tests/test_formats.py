"""Peer LUT formats: round trips, and files written to the published grammars (OFA, ProxylessNAS, NNI, FBNet-PyTorch).

The two YAML fixtures in tests/data are written by tests/data/make_peer_luts.py to the grammar of the published
files, from the published networks' shapes; they are not the downloaded files (latencies are made up).
"""

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from profiler.cli import app
from profiler.latency.formats import FormatError, canonical_op, export_table, import_table, peer_key
from profiler.latency.tables import ZERO_COST, load_table
from profiler.spaces.space import get_space

from helpers import synthetic_table

DATA = Path(__file__).parent / "data"
OFA_LUT = DATA / "ofa_note10_224_lookup_table.yaml"
PROXYLESS_LUT = DATA / "proxyless_mobile_lookup_table.yaml"
CHAIN = "fbnet-cifar:width=0.25"
CELL = "darts-3ops:C=8,cells=5"
OFA_SMALL = "ofa-mbv3:input_size=32,width=0.25,num_classes=10"
PROXYLESS_SMALL = "proxyless:input_size=32,width=0.25,num_classes=10"


def medians(path: Path) -> dict[str, float]:
    return {k: r["median_ms"] for k, r in load_table(path).rows.items()}


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("fmt,spec", [("ofa", OFA_SMALL), ("proxyless", PROXYLESS_SMALL), ("nni", CHAIN),
                                      ("nni", OFA_SMALL), ("hwprof-jsonl", CHAIN), ("hwprof-jsonl", CELL),
                                      ("fbnet-grid", CHAIN), ("fbnet-grid", PROXYLESS_SMALL)])
def test_round_trip(tmp_path, fmt, spec):
    src = synthetic_table(spec, tmp_path / "t.csv")
    exp = export_table(load_table(src), fmt, tmp_path / "peer.txt")
    rep = import_table(tmp_path / "peer.txt", fmt, get_space(spec), "phone", tmp_path / "back.csv")
    back, orig = medians(tmp_path / "back.csv"), medians(src)
    written = [k for k in orig if k not in exp.unexpressible and k not in exp.free]
    assert sorted(rep.missing) == sorted(exp.unexpressible)
    assert rep.unused == [] and rep.ambiguous == [] and rep.conflicts == []
    for k in written:
        assert back[k] == pytest.approx(orig[k], rel=1e-5)
    assert sorted(rep.zero_cost) == sorted(exp.free)
    for k in exp.free:  # identity blocks: the peer format counts them free
        assert back[k] == 0.0 and load_table(tmp_path / "back.csv").rows[k]["variant"] == ZERO_COST
    t = load_table(tmp_path / "back.csv")
    assert t.device == "phone" and t.meta["imported"]["format"] == fmt
    assert t.meta["imported"]["missing"] == rep.missing
    if fmt in ("ofa", "proxyless"):  # the MBConv spaces are wholly expressible in their own format
        identity = {k for k in orig if k.split("|")[1] in ("skip", "zero")}
        assert exp.unexpressible == [] and set(exp.free) == identity and identity


def test_fixtures_are_what_the_generator_writes(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_peer_luts", DATA / "make_peer_luts.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.main(tmp_path)
    for f in (OFA_LUT, PROXYLESS_LUT):
        assert (tmp_path / f.name).read_text() == f.read_text()


def test_fbnet_blocks_have_no_ofa_or_proxyless_name():
    """FBNet's blocks are not MBConv blocks (ReLU; expansion 1 keeps its 1x1 expand): no peer name is faked. Its
    classifier (global pool + linear) is ProxylessNAS' Logits layer, so that one has a name."""
    space = get_space(CHAIN)
    named = {k for k in space.candidate_keys() for d in ("ofa", "proxyless") if peer_key(k, d) is not None}
    assert named == {space.fixed[-1].key()}
    assert peer_key(space.fixed[-1].key(), "proxyless") == "Logits-input:2x2x376-output:10"


# --------------------------------------------------------------------------- the published grammars: OFA


def _ofa_reference_ms(lut: dict, spec: dict) -> float:
    """OFA's MBv3LatencyTable.predict_network_latency_given_spec, re-written from its published logic."""
    def q(key: str) -> float:
        return lut[key]["mean"]

    fsize, total = 112, q("Conv-input:224x224x3-output:112x112x24")
    total += q("expanded_conv-input:112x112x24-output:112x112x24-expand:24-kernel:3-stride:1-idskip:1-se:0-hs:0")
    in_c = 24
    for i in range(20):
        stage = i // 4
        if i % 4 + 1 > spec["d"][stage]:
            continue
        stride, idskip = ([2, 2, 2, 1, 2][stage], 0) if i % 4 == 0 else (1, 1)
        out_c, out_fz = [32, 48, 96, 136, 192][stage], (fsize - 1) // ([2, 2, 2, 1, 2][stage] if i % 4 == 0 else 1) + 1
        total += q(f"expanded_conv-input:{fsize}x{fsize}x{in_c}-output:{out_fz}x{out_fz}x{out_c}-expand:"
                   f"{round(in_c * spec['e'][i])}-kernel:{spec['ks'][i]}-stride:{stride}-idskip:{idskip}-se:"
                   f"{int(stage in (1, 3, 4))}-hs:{int(stage >= 2)}")
        in_c, fsize = out_c, out_fz
    return total + sum(q(k) for k in ("Conv_1-input:7x7x192-output:7x7x1152",
                                      "AvgPool2D-input:7x7x1152-output:1x1x1152",
                                      "Conv_2-input:1x1x1152-output:1x1x1536", "Logits-input:1x1x1536-output:1000"))


def test_ofa_note10_grammar_imports_fully_and_predicts_like_ofa(tmp_path):
    space = get_space("ofa-mbv3")
    rep = import_table(OFA_LUT, "ofa", space, "note10", tmp_path / "t.csv")
    assert rep.block_entries == 91 and rep.block_match_pct == 100.0  # >= 95 % is the goal
    assert rep.missing == [] and rep.unused == [] and rep.conflicts == []
    assert len(rep.zero_cost) == 5  # one identity (skip) key per stage
    assert rep.unit == "ms" and "OFA" in rep.unit_source
    table = load_table(tmp_path / "t.csv")
    lut = yaml.safe_load(OFA_LUT.read_text())
    first = space.layers[0].sites[0].key("mb_k7_e6")
    ofa = lut["expanded_conv-input:112x112x24-output:56x56x32-expand:144-kernel:7-stride:2-idskip:0-se:0-hs:0"]
    assert table.latency_ms(first) == pytest.approx(ofa["mean"])
    assert table.rows[first]["std_ms"] == pytest.approx(math.sqrt(ofa["var"]), rel=1e-5)  # var -> std (6 digits)
    assert table.rows[first]["n"] == ofa["count"]
    rng = random.Random(0)
    for _ in range(20):  # random OFA subnets: our prediction equals OFA's estimator on the same LUT
        spec = {"ks": [rng.choice([3, 5, 7]) for _ in range(20)], "e": [rng.choice([3, 4, 6]) for _ in range(20)],
                "d": [rng.choice([2, 3, 4]) for _ in range(5)]}
        choices = ["skip" if i % 4 >= spec["d"][i // 4] else f"mb_k{spec['ks'][i]}_e{spec['e'][i]}"
                   for i in range(20)]
        assert table.predict_ms(space.arch_keys(choices)) == pytest.approx(_ofa_reference_ms(lut, spec), rel=1e-9)


def _proxyless_reference_ms(lut: dict, choices: list[str]) -> float:
    """ProxylessNAS' expected_latency of one architecture (zero layers cost nothing), from its published logic."""
    total = lut["Conv-input:224x224x3-output:112x112x32"]["mean"]
    total += lut["expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:3-stride:1-idskip:0"]["mean"]
    fsize, c_in, i = 112, 16, 0
    for width, n, s in zip([24, 40, 80, 96, 192, 320], [4, 4, 4, 4, 4, 1], [2, 2, 2, 1, 2, 1]):
        for r in range(n):
            stride = s if r == 0 else 1
            op = choices[i]
            if op != "zero":
                k, e = int(op[4]), int(op[-1])
                total += lut[f"expanded_conv-input:{fsize}x{fsize}x{c_in}-output:{fsize // stride}x{fsize // stride}x"
                             f"{width}-expand:{e}-kernel:{k}-stride:{stride}-idskip:"
                             f"{int(stride == 1 and c_in == width)}"]["mean"]
            fsize, c_in, i = fsize // stride, width, i + 1
    return (total + lut["Conv_1-input:7x7x320-output:7x7x1280"]["mean"]
            + lut["Logits-input:7x7x1280-output:1000"]["mean"])


def test_proxyless_mobile_grammar_imports_fully_and_predicts_like_proxylessnas(tmp_path):
    space = get_space("proxyless")
    rep = import_table(PROXYLESS_LUT, "proxyless", space, "mobile", tmp_path / "t.csv")
    assert rep.block_entries == 67 and rep.block_match_pct == 100.0
    assert rep.missing == [] and rep.unused == [] and len(rep.zero_cost) == 5
    table = load_table(tmp_path / "t.csv")
    lut = yaml.safe_load(PROXYLESS_LUT.read_text())
    assert all(math.isfinite(r["std_ms"]) for r in table.rows.values())  # var -> std, not NaN
    rng = random.Random(1)
    for _ in range(20):
        choices = [rng.choice(layer.choices) for layer in space.layers]
        assert table.predict_ms(space.arch_keys(choices)) == pytest.approx(_proxyless_reference_ms(lut, choices))


def test_published_grammars_drive_the_search_cost_model(tmp_path):
    """An imported table has every key the search needs (identity keys at 0 ms), so hwnas search takes it."""
    from search.costs import CostModel, open_table

    for lut, fmt, spec in ((OFA_LUT, "ofa", "ofa-mbv3"), (PROXYLESS_LUT, "proxyless", "proxyless")):
        space = get_space(spec)
        import_table(lut, fmt, space, "phone", tmp_path / f"{fmt}.csv")
        costs = CostModel(space, [open_table(tmp_path / f"{fmt}.csv", space)])
        choices = [layer.choices[0] for layer in space.layers]
        assert costs.latency_ms(choices) == pytest.approx(costs.exact("latency", choices), rel=1e-6)


def test_yaml_importer_tolerates_the_real_files_variations(tmp_path):
    text = OFA_LUT.read_text()
    lut = yaml.safe_load(text)
    first = "expanded_conv-input:112x112x24-output:56x56x32-expand:72-kernel:3-stride:2-idskip:0-se:0-hs:0"
    reordered = "expanded_conv-kernel:3-input:112x112x24-expand:72-output:56x56x32-stride:2-se:0-idskip:0-hs:0"
    extra = "\n".join([
        "# a trailing comment block, as hand-edited files have",
        f"{reordered}: {{mean: {lut[first]['mean'] * 2}, var: 1e-06, min: 0.1, max: 9}}",  # same key, other order
        "expanded_conv-input:80x80x24-output:40x40x32-expand:72-kernel:3-stride:2-idskip:0-se:0-hs:0: "
        "{mean: 0.3, count: 10}",  # another resolution's block
        "Conv-input:160x160x3-output:80x80x24: 0.2",  # a bare number
        "SomethingElse: {mean: 1.0}",  # not a key of the grammar
        "Conv_1-input:7x7x192-output:7x7x1152: {mean: '1e-01', var: '1e-06'}",  # numbers PyYAML leaves as strings
    ])
    src = tmp_path / "lut.yaml"
    src.write_text(text + extra + "\n")
    rep = import_table(src, "ofa", get_space("ofa-mbv3"), "note10", tmp_path / "t.csv")
    assert rep.entries == 96 + 5 and rep.block_entries == 93 and rep.block_matched == 92
    assert len(rep.unused) == 3
    assert any("SomethingElse" in u and "not a type-name" in u for u in rep.unused)
    assert any("80x80x24" in u and "no block of this shape" in u for u in rep.unused)
    assert "value fields ignored: max, min" in rep.notes
    assert {c.key for c in rep.conflicts} == {get_space("ofa-mbv3").layers[0].sites[0].key("mb_k3_e3"),
                                              get_space("ofa-mbv3").fixed[2].key()}
    c = [c for c in rep.conflicts if "mb_k3_e3" in c.key][0]
    assert c.spread == pytest.approx(2.0) and len(c.sources) == 2
    t = load_table(tmp_path / "t.csv")
    row = t.rows[c.key]
    assert row["median_ms"] == pytest.approx(1.5 * lut[first]["mean"]) and row["status"] == "noisy"
    with pytest.raises(FormatError, match=r"2 entries name key .*--conflicts mean"):
        import_table(src, "ofa", get_space("ofa-mbv3"), "note10", tmp_path / "u.csv", on_conflict="error")
    assert not (tmp_path / "u.csv").exists()


def test_dialect_mismatch_names_the_right_format(tmp_path):
    with pytest.raises(FormatError, match="use --format ofa"):
        import_table(OFA_LUT, "proxyless", get_space("proxyless"), "x", tmp_path / "t.csv")
    with pytest.raises(FormatError, match="use --format proxyless"):
        import_table(PROXYLESS_LUT, "ofa", get_space("ofa-mbv3"), "x", tmp_path / "t.csv")
    assert not (tmp_path / "t.csv").exists()


# ------------------------------------------------------------------------------- FBNet-PyTorch grid, NNI


FBNET_PYTORCH_HEADER = "ir_k3_e1 ir_k3_s2 ir_k3_e3 ir_k3_e6 ir_k5_e1 ir_k5_s2 ir_k5_e3 ir_k5_e6 skip"


def _fbnet_pytorch_grid(space, rng) -> tuple[str, dict]:
    """FBNet-PyTorch's lookup_table.txt: an op-name line, then one row of microseconds per layer."""
    rows, cells = [], {}
    for layer in space.layers:
        vals = [round(rng.uniform(50, 3000), 3) for _ in range(9)]
        rows.append(" ".join(map(str, vals)))
        for op, v in zip(("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip"), vals):
            cells.setdefault(layer.sites[0].key(op), []).append(v)
    return FBNET_PYTORCH_HEADER + "\n" + "\n".join(rows) + "\n", cells


def test_fbnet_pytorch_grid_unit_and_conflicts(tmp_path):
    space = get_space(CHAIN)
    text, cells = _fbnet_pytorch_grid(space, random.Random(3))
    src = tmp_path / "lookup_table.txt"
    src.write_text(text)
    rep = import_table(src, "fbnet-grid", space, "cpu", tmp_path / "t.csv")
    assert rep.unit == "us" and "FBNet-PyTorch" in rep.unit_source
    assert rep.entries == 22 * 9 and rep.matched == 22 * 9
    shared = {k: v for k, v in cells.items() if len(v) > 1}
    assert len(shared) > 0 and {c.key for c in rep.conflicts} == set(shared)  # nothing disappears silently
    assert sorted(rep.missing) == sorted(s.key() for s in space.fixed)
    t = load_table(tmp_path / "t.csv")
    for key, vals in cells.items():
        assert t.latency_ms(key) == pytest.approx(np.mean(vals) / 1000, rel=1e-5)  # us -> ms, averaged
        assert t.rows[key]["n"] == (len(vals) if len(vals) > 1 else 0)
    worst = max(rep.conflicts, key=lambda c: c.spread)
    assert worst.spread == pytest.approx(max(shared[worst.key]) / min(shared[worst.key]))
    rep_ms = import_table(src, "fbnet-grid", space, "cpu", tmp_path / "ms.csv", unit="ms")
    assert rep_ms.unit_source == "--unit"
    assert load_table(tmp_path / "ms.csv").latency_ms(worst.key) == pytest.approx(np.mean(shared[worst.key]), rel=1e-5)


@pytest.mark.parametrize("name,op", [("ir_k3_e1", "k3_e1"), ("ir_k5_s2", "k5_e1_g2"), ("k3_e1_g2", "k3_e1_g2"),
                                     ("IR_K3_G2", "k3_e1_g2"), ("Identity", "skip"), ("7x7_MBConv6", "mb_k7_e6"),
                                     ("Zero", "zero"), ("k7_e3", "mb_k7_e3"), ("ir_k3", None)])
def test_op_spellings(name, op):
    ops = get_space(CHAIN).ops + get_space("proxyless").ops
    assert canonical_op(name, ops) == op


def test_nni_python_literal_lut(tmp_path):
    space = get_space(CHAIN)
    stem, l1 = space.fixed[0], space.layers[1].sites[0]  # L01: 8 -> 8 channels at 32x32, stride 2
    lines = [
        "# NNI FBNet lookup table",
        f"{{'op_name': 'stem', 'op_data_shape': (32, 32, 3, {stem.c_out}, 1), 'op_latency': 70.0}}",
        f"{{'op_name': 'ir_k3_e3', 'op_data_shape': (32, 32, {l1.c_in}, {l1.c_out}, 2), 'op_dtype': 'float32', "
        f"'op_latency': 300}}",
        f"{{'op_name': 'k3_e3', 'op_data_shape': (32, 32, {l1.c_in}, {l1.c_out}, 2), 'op_latency': 500}},",
        "{'op_name': 'conv_7x7', 'op_data_shape': (224, 224, 3, 64, 2), 'op_latency': 1000.0}",
        "{'op_name': 'k3_e3', 'op_data_shape': (__import__('os').getpid(), 1, 1, 1, 1), 'op_latency': 1}",
    ]
    src = tmp_path / "lut.txt"
    src.write_text("\n".join(lines[:5]) + "\n")
    rep = import_table(src, "nni", space, "cpu", tmp_path / "t.csv")
    assert rep.unit == "us" and "NNI" in rep.unit_source
    assert rep.matched == 3 and len(rep.unused) == 1 and "conv_7x7" in rep.unused[0]
    t = load_table(tmp_path / "t.csv")
    assert t.latency_ms(stem.key()) == pytest.approx(0.07)
    assert t.latency_ms(l1.key("k3_e3")) == pytest.approx(0.4) and len(rep.conflicts) == 1  # (300 + 500) / 2 us
    src.write_text("[" + ",\n".join(lines[1:3]) + "]\n")  # one list literal
    assert import_table(src, "nni", space, "cpu", tmp_path / "t2.csv").matched == 2
    src.write_text(lines[5] + "\n")  # literal_eval, never eval: a call is refused, not run
    with pytest.raises(FormatError, match="line 1: .* is not a Python literal dict"):
        import_table(src, "nni", space, "cpu", tmp_path / "t3.csv")
    assert not (tmp_path / "t3.csv").exists()


def test_nni_no_match_error_gives_real_examples(tmp_path):
    space = get_space(CHAIN)
    src = tmp_path / "lut.txt"
    src.write_text("{'op_name': 'k9_e9', 'op_data_shape': (32, 32, 3, 8, 1), 'op_latency': 1.0}\n"
                   f"{{'op_name': 'stem', 'op_data_shape': (64, 64, 3, {space.fixed[0].c_out}, 1), "
                   f"'op_latency': 1.0}}\n")
    with pytest.raises(FormatError) as e:
        import_table(src, "nni", space, "cpu", tmp_path / "t.csv")
    msg = str(e.value)
    assert "2 entries: 2 unused, e.g. line 1: k9_e9 (32, 32, 3, 8, 1) (op name not in the space)" in msg
    assert "line 2: stem (64, 64, 3, 8, 1) (no site of this shape in the space)" in msg
    assert "e.g. -" not in msg and "\n" not in msg


def test_nni_ambiguity_is_listed(tmp_path):
    """Two keys that differ only in params (NNI names none) make an entry ambiguous; the error quotes it."""
    import dataclasses

    from profiler.spaces.space import Site

    space = get_space(CHAIN)
    a = space.fixed[0]
    twin = Site("stem5", a.c_in, a.c_out, a.stride, a.input_hw, op="stem", params=(("kernel", 5),))
    space = dataclasses.replace(space, fixed=(a, twin))  # a space with a 3x3 and a 5x5 stem of one shape
    src = tmp_path / "lut.txt"
    src.write_text(f"{{'op_name': 'stem', 'op_data_shape': (32, 32, 3, {a.c_out}, 1), 'op_latency': 1.0}}\n")
    with pytest.raises(FormatError, match=r"1 ambiguous, e.g. line 1: stem \(32, 32, 3, 8, 1\) matches 2 keys"):
        import_table(src, "nni", space, "cpu", tmp_path / "t.csv")


def test_old_json_lines_point_to_hwprof_jsonl(tmp_path):
    src = synthetic_table(CHAIN, tmp_path / "t.csv")
    export_table(load_table(src), "hwprof-jsonl", tmp_path / "lut.jsonl")
    with pytest.raises(FormatError, match="use --format hwprof-jsonl"):
        import_table(tmp_path / "lut.jsonl", "nni", get_space(CHAIN), "cpu", tmp_path / "b.csv")


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fmt,content,fragment", [
    ("fbnet-grid", "0.1 0.2\n", "1 rows, space .* has 22 searchable layers"),
    ("fbnet-grid", "\n".join(["0.1 0.2 0.3"] * 22), "line 1: 3 values, expected 9"),
    ("fbnet-grid", "\n".join(["0.1 x 0.3 0.1 0.1 0.1 0.1 0.1 0.1"] * 22), "line 1: value 'x' is not a number"),
    ("fbnet-grid", "ir_k3_e1 ir_k7_e9\n", "line 1: column 'ir_k7_e9' names no op"),
    ("ofa", "Conv-input:32x32x3-output:32x32x8: {count: 1, mean: fast}\n",
     "line 1: entry 'Conv-input:32x32x3-output:32x32x8': field 'mean' = 'fast' must be a number"),
    ("ofa", "Conv-input:32x32x3-output:32x32x8: {mean: 1, var: -2}\n", "field 'var' = -2 must be a number >= 0"),
    ("ofa", "- just\n- a list\n", "a YAML mapping of keys"),
    ("ofa", "a: [1\n", "not valid YAML"),
    ("nni", "{'op_name': 'stem', 'op_latency': 1}\n", "line 1: field 'op_data_shape' is missing"),
    ("nni", "{'op_name': 'stem', 'op_data_shape': (1, 2, 3), 'op_latency': 1}\n",
     r"field 'op_data_shape' = \(1, 2, 3\) must be 5 positive integers \(w, h, C_in, C_out, stride\)"),
    ("nni", "{'op_name': 'stem', 'op_data_shape': (32, 32, 3, 8, 1), 'op_latency': -1}\n",
     "field 'op_latency' = -1 must be a number >= 0"),
])
def test_bad_files_are_one_line_errors_naming_the_field(tmp_path, fmt, content, fragment):
    src = tmp_path / "peer.txt"
    src.write_text(content)
    with pytest.raises(FormatError, match=fragment) as e:
        import_table(src, fmt, get_space(CHAIN), "cpu", tmp_path / "t.csv")
    assert "\n" not in str(e.value) and str(src) in str(e.value)
    assert not (tmp_path / "t.csv").exists()


def test_fbnet_grid_refuses_cell_spaces(tmp_path):
    table = load_table(synthetic_table(CELL, tmp_path / "t.csv"))
    with pytest.raises(FormatError, match="chain spaces only"):
        export_table(table, "fbnet-grid", tmp_path / "g.txt")
    assert not (tmp_path / "g.txt").exists()


def test_cli_import_export_and_show(tmp_path):
    runner = CliRunner()
    out = tmp_path / "ofa.csv"
    r = runner.invoke(app, ["import", str(OFA_LUT), "--format", "ofa", "--space", "ofa-mbv3", "--device", "note10",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "96 of 96 file entries matched, blocks 91/91 (100.0 %), 0 key(s) missing, 0 unused, 0 ambiguous, " \
           "0 conflicting" in r.output
    assert "unit ms: OFA's lookup tables hold milliseconds" in r.output
    r = runner.invoke(app, ["show", str(out)])
    assert r.exit_code == 0, r.output
    assert "imported: ofa file" in r.output and str(OFA_LUT.resolve()) in r.output.replace("\n", "")
    assert "machine:" not in r.output and "None" not in r.output  # an imported table has no machine fields
    info = json.loads(runner.invoke(app, ["show", str(out), "--json"]).stdout)
    assert info["imported"]["sha256"] and info["imported"]["block_matched"] == 91
    r = runner.invoke(app, ["export", str(out), "--format", "ofa", "--out", str(tmp_path / "back.yaml")])
    assert r.exit_code == 0 and "wrote 96 entries" in r.output and "5 identity key(s) left out" in r.output
    back = yaml.safe_load((tmp_path / "back.yaml").read_text())
    assert set(back) == set(yaml.safe_load(OFA_LUT.read_text()))
    for args, fragment in (
        (["import", str(OFA_LUT), "--format", "tflite", "--space", "ofa-mbv3", "--device", "x"], "unknown format"),
        (["import", str(OFA_LUT), "--format", "ofa", "--space", "ofa-mbv3", "--device", "x", "--unit", "s"],
         "--unit 's' is not one of ms, us"),
        (["import", str(tmp_path / "nope.yaml"), "--format", "ofa", "--space", "ofa-mbv3", "--device", "x"],
         "no such file"),
    ):
        r = runner.invoke(app, args + ["--out", str(tmp_path / "x.csv")])
        assert r.exit_code == 2 and fragment in r.output, r.output
        assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("fmt", ["fbnet-grid", "nni", "hwprof-jsonl", "ofa"])
def test_an_imported_table_exports_and_reimports_with_its_free_identity_rows(tmp_path, fmt):
    space = get_space("ofa-mbv3")
    import_table(OFA_LUT, "ofa", space, "note10", tmp_path / "t.csv")
    export_table(load_table(tmp_path / "t.csv"), fmt, tmp_path / "peer.txt")
    rep = import_table(tmp_path / "peer.txt", fmt, space, "note10", tmp_path / "back.csv")
    assert rep.missing == [] and rep.unused == [] and len(rep.zero_cost) == 5
    assert medians(tmp_path / "back.csv") == pytest.approx(medians(tmp_path / "t.csv"), rel=1e-5)


def test_zero_for_a_real_block_is_unused_not_free(tmp_path):
    space = get_space(CHAIN)
    site = space.layers[1].sites[0]
    src = tmp_path / "lut.txt"
    src.write_text(f"{{'op_name': 'k3_e3', 'op_data_shape': (32, 32, {site.c_in}, {site.c_out}, 2), 'op_latency': 0}}\n"
                   f"{{'op_name': 'k3_e6', 'op_data_shape': (32, 32, {site.c_in}, {site.c_out}, 2), "
                   f"'op_latency': 5}}\n")
    rep = import_table(src, "nni", space, "cpu", tmp_path / "t.csv")
    assert rep.matched == 1 and rep.unused == ["line 1: k3_e3 (32, 32, 8, 8, 2) (0 ms for a block that is not an "
                                               "identity)"]

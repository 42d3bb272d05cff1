"""Probe: bad inputs and writer faults through the real CLIs (hwprof, hwnas); counts tracebacks and silent acceptances.

    .venv/bin/python bench/probe_bad_input.py [--keep DIR] [-v]

Each probe runs one CLI command in a subprocess on a bad input and is classed as
  clean     exit 2, no traceback, one 'error:' line, and nothing written where the probe says nothing may be written
  traceback a Python traceback reached the user
  silent    exit 0: the bad input was accepted
  other     any other outcome (another exit code, several lines, a half-written file): listed with its output
Goal: every probe clean. Prints one line per probe and the counts; exit 1 when any probe is not clean.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
SPEC = "darts-3ops:C=8,cells=3"


@dataclass
class Probe:
    name: str
    argv: list[str]
    untouched: list[Path] = field(default_factory=list)  # must not exist afterwards, or keep their bytes
    setup: Callable[[], object] | None = None  # e.g. hold a lock while the command runs


def _digest(p: Path) -> str | None:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


def write_table(path: Path, spec: str = SPEC, device: str = "probe", runtime: str = "onnxruntime",
                meta_extra: dict | None = None) -> Path:
    """A valid measured-looking table (every key 0.1 ms) written with the library."""
    from profiler.latency.tables import SCHEMA_VERSION, Row, TableWriter
    from profiler.spaces.keys import KEY_VERSION
    from profiler.spaces.space import get_space

    sp = get_space(spec)
    meta = {"schema_version": SCHEMA_VERSION, "key_version": KEY_VERSION, "device": device, "runtime": runtime,
            "space": sp.spec, "space_json": sp.to_json(), "batch": 1, "protocol": {}, **(meta_extra or {})}
    with TableWriter(path, meta, fresh=True) as w:
        for k in sp.candidate_keys():
            w.append(Row(k, median_ms=0.1, p10_ms=0.09, p90_ms=0.11, mean_ms=0.1, std_ms=0.001, cv=0.01, n=20,
                         calls_per_sample=1, attempts=1, status="ok"))
    return path


def arch_with_bad_keys(path: Path, spec: str = SPEC) -> Path:
    """An architecture JSON of ``spec`` (every layer's first choice) whose ``layers[0].keys`` is 5, not a list."""
    from profiler.spaces.arch import make_arch
    from profiler.spaces.space import get_space

    sp = get_space(spec)
    arch = json.loads(make_arch(sp, [lay.choices[0] for lay in sp.layers]).dumps())
    arch["layers"][0]["keys"] = 5
    path.write_text(json.dumps(arch))
    return path


def edit_meta(table: Path, fn: Callable[[dict], None]) -> Path:
    """Apply ``fn`` to the table's header (its .meta.json) in place."""
    mp = table.with_suffix(".meta.json")
    meta = json.loads(mp.read_text())
    fn(meta)
    mp.write_text(json.dumps(meta))
    return table


def _devices(d: Path, name: str, body: str) -> Path:
    p = d / f"{name}.yaml"
    p.write_text("devices:\n" + body)
    return p


def build_probes(d: Path) -> list[Probe]:
    hw, nas = str(BIN / "hwprof"), str(BIN / "hwnas")
    good = write_table(d / "good" / "t.csv")
    probes: list[Probe] = []
    add = probes.append

    # devices.yaml
    bad_utf8 = d / "utf8.yaml"
    bad_utf8.write_bytes(b"devices:\n  cpu:\n    runtime: onnxruntime\n    description: caf\xe9\n")
    add(Probe("devices.yaml non-UTF-8 byte", [hw, "devices", "--devices", str(bad_utf8)]))
    cases = {
        "threads -3": "  c:\n    runtime: onnxruntime\n    threads: -3\n",
        "duplicate device name": "  c:\n    runtime: onnxruntime\n  c:\n    runtime: torch\n",
        "protocol max_seconds inf": "  c:\n    runtime: onnxruntime\n    protocol: {max_seconds: .inf}\n",
        "protocol warmup_s inf": "  c:\n    runtime: onnxruntime\n    protocol: {warmup_s: .inf}\n",
        "protocol min_samples 0": "  c:\n    runtime: onnxruntime\n    protocol: {min_samples: 0}\n",
        "device name ../../x": "  ../../x:\n    runtime: onnxruntime\n",
        "rpc timeout inf": "  c:\n    runtime: tvm\n    target: llvm\n    rpc: {tracker: 'h:1', key: k, "
                           "session_timeout_s: .inf}\n",
    }
    for i, (name, body) in enumerate(cases.items()):
        add(Probe(f"devices.yaml {name}", [hw, "devices", "--devices", str(_devices(d, f"dev{i}", body))]))

    # space parameters (measure stops before writing anything)
    for spec in ("fbnet-cifar:width=inf", "fbnet-cifar:width=-1", "fbnet-cifar:width=0", "fbnet-cifar:stem_stride=0",
                 "fbnet-cifar:input_size=0", "darts:C=0", "darts:nodes=0", "fbnet-cifar:width=nan"):
        out = d / "m" / f"{spec.replace(':', '_')}.csv"
        add(Probe(f"--space {spec}", [hw, "measure", "--space", spec, "--out", str(out)], [out]))

    # tables
    def table_case(name: str, edit: Callable[[Path], None]) -> None:
        t = write_table(d / "tables" / f"{len(probes)}.csv")
        edit(t)
        add(Probe(f"table {name}", [hw, "show", str(t)]))

    def append_line(t: Path, line: bytes) -> None:
        with open(t, "ab") as f:
            f.write(line)

    table_case("non-UTF-8 byte", lambda t: append_line(t, b"caf\xe9," * 20 + b"\n"))
    table_case("header without device", lambda t: edit_meta(t, lambda m: m.pop("device")))
    table_case("header without space", lambda t: edit_meta(t, lambda m: m.pop("space")))
    table_case("header batch 'abc'", lambda t: edit_meta(t, lambda m: m.update(batch="abc")))
    table_case("header protocol max_seconds 1e300", lambda t: edit_meta(
        t, lambda m: m.update(protocol={"max_seconds": 1e300})))
    table_case("header non-UTF-8", lambda t: t.with_suffix(".meta.json").write_bytes(b'{"a": "\xff"}'))
    table_case("header duplicate key", lambda t: t.with_suffix(".meta.json").write_text(
        t.with_suffix(".meta.json").read_text()[:-1] + ', "device": "other"}'))

    def inf_row(t: Path) -> None:
        lines = t.read_text().splitlines()
        cells = lines[1].split(",")
        cells[6] = "inf"
        t.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")

    def dup_row(t: Path) -> None:
        lines = t.read_text().splitlines()
        t.write_text("\n".join([*lines, lines[1]]) + "\n")

    table_case("inf latency", inf_row)
    table_case("duplicate key rows", dup_row)
    table_case("calibration a list", lambda t: t.with_suffix(".calib.json").write_text("[1, 2]"))
    table_case("calibration scale 'x'", lambda t: t.with_suffix(".calib.json").write_text(
        '{"version": 1, "scale": "x", "offset_ms": 0}'))
    table_case("calibration scale_by_op inf", lambda t: t.with_suffix(".calib.json").write_text(
        '{"version": 1, "scale": 1, "offset_ms": 0, "scale_by_op": {"a": Infinity}}'))

    # measure-model
    txt, rnd = d / "text.onnx", d / "random.onnx"
    txt.write_text("not a model\n")
    rnd.write_bytes(os.urandom(4096))
    add(Probe("measure-model text file", [hw, "measure-model", str(txt)]))
    add(Probe("measure-model random bytes", [hw, "measure-model", str(rnd)]))

    # import
    src8 = d / "lut.yaml"
    src8.write_bytes(b"a: {mean: 1.0}\nb: caf\xe9\n")
    out8 = d / "imp" / "a.csv"
    add(Probe("import non-UTF-8 file", [hw, "import", str(src8), "-f", "ofa", "-s", "ofa-mbv3", "-d", "x",
                                        "--out", str(out8)], [out8]))
    jl = d / "inf.jsonl"
    from profiler.spaces.keys import parse_key
    from profiler.spaces.space import get_space

    k = parse_key(get_space(SPEC).candidate_keys()[0])
    rec = {"op_name": k.op, "op_data_shape": list(k.input_shape), "c_out": k.c_out, "stride": k.stride,
           "params": dict(k.params)}
    jl.write_text(json.dumps({**rec, "op_latency": 0.1}) + "\n" + json.dumps({**rec, "op_latency": float("inf")})
                  + "\n")
    outj = d / "imp" / "j.csv"
    add(Probe("import inf latency", [hw, "import", str(jl), "-f", "hwprof-jsonl", "-s", SPEC, "-d", "x",
                                     "--out", str(outj)], [outj]))
    okjl = d / "ok.jsonl"
    okjl.write_text(json.dumps({**rec, "op_latency": 0.1}) + "\n")
    measured = write_table(d / "measured" / "t.csv")
    add(Probe("import --out over a measured table", [hw, "import", str(okjl), "-f", "hwprof-jsonl", "-s", SPEC,
                                                     "-d", "probe", "--out", str(measured)], [measured]))
    add(Probe("import --device ../../x", [hw, "import", str(okjl), "-f", "hwprof-jsonl", "-s", SPEC,
                                          "-d", "../../x"]))

    # architecture JSON
    from profiler.spaces.arch import make_arch, save_arch

    sp = get_space(SPEC)
    aj = arch_with_bad_keys(d / "arch.json")
    add(Probe("arch JSON \"keys\": 5", [hw, "predict", str(aj), "--table", str(good)]))
    save_arch(make_arch(sp, [lay.choices[0] for lay in sp.layers]), d / "arch_ok.json")
    a8 = d / "arch8.json"
    a8.write_bytes((d / "arch_ok.json").read_bytes().replace(b'"schema"', b'"sch\xe9ma"', 1))
    add(Probe("arch JSON non-UTF-8", [hw, "predict", str(a8), "--table", str(good)]))
    onx = d / "exp" / "m.onnx"
    add(Probe("hwnas export arch JSON \"keys\": 5", [nas, "export", str(aj), "--out", str(onx)], [onx]))

    # search config overrides (nothing may be written to the run directory)
    for o in ("epochs=abc", "control=5", "weights_opt.lr=-1", "loss_beta=NaN", "arch_opt.betas=[2, 3]"):
        run = d / "runs" / o.replace("=", "_").replace(".", "_")
        add(Probe(f"--set {o}", [nas, "search", "--space", SPEC, "--table", str(good), "--set", o, "--out", str(run)],
                  [run]))
    inf_t = write_table(d / "inf" / "t.csv")
    inf_row(inf_t)
    run = d / "runs" / "inf_table"
    add(Probe("search with an inf-latency table", [nas, "search", "--space", SPEC, "--table", str(inf_t),
                                                   "--epochs", "1", "--out", str(run)], [run]))

    # single writer: a second measure of a table that is being written
    locked = write_table(d / "locked" / "t.csv")

    def hold() -> object:
        from profiler.fileio import FileLock

        return FileLock(locked, "table").acquire()

    add(Probe("second writer on a table", [hw, "measure", "--space", SPEC, "--out", str(locked)], [locked],
              setup=hold))
    return probes


def classify(p: Probe, before: dict[Path, str | None], rc: int, text: str) -> str:
    if "Traceback (most recent call last)" in text:
        return "traceback"
    if rc == 0:
        return "silent"
    changed = [q for q in p.untouched if _digest(q) != before[q] or (before[q] is None and q.exists())]
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    if rc == 2 and len(errors) == 1 and not changed:
        return "clean"
    return "other"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, help="Keep the probe files in this folder.")
    ap.add_argument("-v", "--verbose", action="store_true", help="Print every probe's error line.")
    args = ap.parse_args()
    d = Path(args.keep or tempfile.mkdtemp(prefix="probe-bad-input-"))
    d.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HWNAS_CACHE=str(d / "cache"), COLUMNS="200", NO_COLOR="1")
    probes = build_probes(d)
    counts: dict[str, int] = {"clean": 0, "traceback": 0, "silent": 0, "other": 0}
    t0 = time.perf_counter()
    for p in probes:
        before = {q: _digest(q) for q in p.untouched}
        held = p.setup() if p.setup else None
        r = subprocess.run(p.argv, capture_output=True, text=True, env=env, cwd=d, timeout=300)
        if held is not None:
            held.release()
        text = r.stdout + r.stderr
        c = classify(p, before, r.returncode, text)
        counts[c] += 1
        line = next((ln for ln in text.splitlines() if ln.startswith("error:")), text.strip()[-200:])
        print(f"{c:9s} rc={r.returncode} {p.name}" + (f"\n          {line}" if args.verbose or c != "clean" else ""))
    print(f"\n{len(probes)} probes in {time.perf_counter() - t0:.0f} s: " + ", ".join(f"{v} {k}" for k, v in
                                                                                 counts.items()))
    return 0 if counts["clean"] == len(probes) else 1


if __name__ == "__main__":
    sys.exit(main())

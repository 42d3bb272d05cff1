"""Does the search search? Every method against random architectures, on the same engine and retrain recipe.

    python bench/bench_nas.py --quick [--measure] [--jobs 2]      # 2 seeds, tiny subsets
    python bench/bench_nas.py [--seeds 3] [--measure] [--jobs 3]   # full: ~60-90 min on 2 shared cores with --jobs 3

Sizes (``SCALES``), chosen so the full bench fits 90 minutes on 2 cores (the 8 fbnet runs, bilevel, are ~80 % of the
search cost): space fbnet-cifar:input_size=16,width=0.25, batch 32; quick: 2 seeds, family 3, search 4 epochs on 800
training samples, retrain 3 epochs on 800, val 200, test 500; full: 3 seeds, search 6 epochs on 1200 (at 3 on 600 no
supernet trained: val acc 0.06-0.12 at the end), families of 8 (as many as the fbnet runs; was 5), retrain 10 epochs
on 1200 (at 4 the larger networks lose, under-trained: bench/capacity_probe.py), val 300, test 1000;
``--retrain-epochs`` changes it. The table is calibrated first (``hwprof verify``'s fit on random whole networks, as
``hwnas run`` does; ``--no-calibrate``: raw per-op sums), so predicted latencies, the twins' matching and kappa's
reference scale exclude the per-op session overhead that dominates such small networks. ``--data`` defaults to
fashion-mnist when this checkout reads it offline, else digits (said in the output). ``--jobs N`` runs N seeds at
once, each in its own process with ``--threads`` torch threads; ``--report-only`` prints the report again from the
seed files of such a run.
``--search-set KEY=VALUE`` (repeatable) changes the ``hwnas`` and ``seed`` searches only, e.g. the lean sampler on
twice the search data: ``--search-set sampler=lean --search-set per_sample=false --search-set train_limit=1200``
(README, Benchmarks, has both figures).

Per seed, on one latency table (device ``--device``, default ``cpu-1t``) and one data subset:

(a) one ``hwnas`` run -> ``derive --family N``;  (b) one ``seed`` run (S over the ops) -> its family of N;
(c) 8 ``fbnet`` runs (FBNet's loss, sampler, temperature and bilevel split) with an additive latency penalty
    kappa * E[latency] / ref at 8 kappa log-spaced over [0.01, 10];
(d) random architectures, N uniform (every layer's op uniform) and, for every member of (a) and (b), one
    rejection-sampled to its predicted latency (within 3 %; the proposal takes each layer's cheapest op with
    probability w ~ U(0, 1), else a uniform op, so every latency is reachable; 20000 draws at most, else the nearest);
(e) one ``darts-cc`` run -> its family of N over lambda.
Families and random architectures leave out networks that cannot see the image (logits that depend on under a
quarter of the input's pixels: ``search.derive.blind_note``; ``--keep-blind`` keeps them); the fbnet runs' argmax is
taken as it comes. The report counts such networks per method.

Every architecture is retrained from scratch with one :class:`search.retrain.TrainConfig` (best epoch chosen on the
validation split; the test split is read once, at the end). Derivation reads no data at all. Figures per method:
each architecture's test accuracy and predicted (``--measure``: and measured) latency, the Pareto hypervolume of
(latency, test accuracy) with one reference per seed (1.2x the slowest architecture of any method, accuracy 0;
divided by the reference latency, so 1.0 = 100 % accuracy at 0 ms), mean +- std over seeds, search cost in wall
seconds and passes over the training subset, and accuracy at matched latency against (d), mean +- std of the
difference. Then the three goals of issue 9 with PASS / MISS (goal 1 twice: against the uniform random
architectures, and against the family's own latency-matched twins, which isolates the choice of ops from the reach
in latency), and each family's predicted-latency span per seed against the space's own (fastest to slowest
architecture on the table).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from profiler.latency.tables import atomic_write_text, load_table  # noqa: E402
from profiler.measuring.devices import get_device  # noqa: E402
from profiler.measuring.model_measure import measure_model  # noqa: E402
from profiler.measuring.stats import summarize  # noqa: E402
from profiler.spaces.arch import export_arch, make_arch  # noqa: E402
from profiler.spaces.network import input_coverage  # noqa: E402
from profiler.spaces.space import get_space  # noqa: E402
from search.config import apply_overrides, preset  # noqa: E402
from search.data import DataError, Splits, load_data  # noqa: E402
from search.derive import BLIND_BELOW, Deriver, blind_note, derive_family, to_arch  # noqa: E402
from search.pipeline import QUICK_PROTOCOL, RunConfig, ensure_calibration, ensure_table  # noqa: E402
from search.report import hypervolume  # noqa: E402
from search.retrain import TrainConfig, retrain  # noqa: E402
from search.run import load_run  # noqa: E402
from search.train import search  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Scale:
    space: str
    members: int  # family size of (a), (b), (e) and the number of uniform random architectures
    search_epochs: int
    retrain_epochs: int
    n_search: int  # training samples the searches see (the first n_search of the retrain subset)
    n_train: int  # retrain subset sizes (capped at what the data has)
    n_val: int
    n_test: int
    batch_size: int
    seeds: int  # default --seeds
    quick_protocol: bool


SCALES = {
    # searches long enough that every supernet trains (at 3 epochs on 600 their val acc stayed at 0.06-0.12 and
    # arch_max_prob at 0.12-0.16: the families were drawn from untrained supernets; README, Benchmarks)
    "quick": Scale("fbnet-cifar:input_size=16,width=0.25", 3, 4, 3, 800, 800, 200, 500, 32, 2, True),
    # full: families of 8, as many architectures as the 8 fbnet runs give, so the hypervolumes (a maximum over
    # members) compare like with like (was 5)
    "full": Scale("fbnet-cifar:input_size=16,width=0.25", 8, 6, 10, 1200, 1200, 300, 1000, 32, 3, False),
}
FBNET_KAPPAS = np.geomspace(0.01, 10.0, 8)
MATCH_TOL = 0.03


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------ data, table


def _cut(ds: TensorDataset, n: int) -> TensorDataset:
    return TensorDataset(*(t[:n] for t in ds.tensors))


def load_subsets(name: str, space, seed: int, sc: Scale, data_dir: str | None) -> tuple[Splits, str]:
    """The data subsets of one seed and a note naming the data; Fashion-MNIST falls back to digits when absent."""
    note = ""
    try:
        s = load_data(name, space.input_shape[1], space.input_shape[0], seed, data_dir)
    except DataError as e:
        if name == "digits":
            raise
        note = f"--data {name} unavailable here ({e}); using digits (sklearn, the small fallback)"
        s = load_data("digits", space.input_shape[1], space.input_shape[0], seed)
    cut = Splits(_cut(s.train, sc.n_train), _cut(s.val, sc.n_val), _cut(s.test, sc.n_test), s.num_classes, s.name)
    return cut, note


def default_data() -> str:
    """fashion-mnist when this checkout's loader reads it offline, else digits."""
    try:
        load_data("fashion-mnist", 8, 1, 0)
        return "fashion-mnist"
    except (DataError, OSError):
        return "digits"


# ------------------------------------------------------------------------------------------------ searches


def passes(metrics: list[dict], cfg, n_train: int) -> float:
    """Passes over the training subset: weight-step samples plus, for bilevel runs, architecture-step samples."""
    total = 0.0
    for m in metrics:
        total += m["train_samples"]
        if cfg.optimisation == "bilevel" and m["arch_trained"]:
            total += m["train_steps"] * cfg.batch_size
    return total / max(1, n_train)


def run_search(cfg, out: Path, splits: Splits) -> tuple[object, float, float]:
    """Search into ``out`` (fresh) on ``cfg.train_limit`` training samples; returns the loaded run, wall seconds and
    passes over the data the search saw."""
    t = time.perf_counter()
    hist = search(cfg, out, splits=splits)
    wall = time.perf_counter() - t
    return load_run(out), wall, passes(hist, cfg, min(cfg.train_limit or len(splits.train), len(splits.train)))


def searched(name: str, sc: Scale, table: Path, seed: int, sets: list[str] = ()):
    cfg = preset(name, space=sc.space, tables=(str(table),), epochs=sc.search_epochs, seed=seed,
                 batch_size=sc.batch_size, train_limit=sc.n_search)
    return apply_overrides(cfg, list(sets))


def family(run, n: int, tag: str, keep_blind: bool = False) -> tuple[list, float]:
    t = time.perf_counter()
    members, _ = derive_family(Deriver(run), n, keep_blind=keep_blind)
    return [to_arch(run, c, tag, str(run.path)) for c in members], time.perf_counter() - t


# ------------------------------------------------------------------------------------------------ random


def _proposal(space, cheapest, rng: random.Random) -> list[str]:
    w = rng.random()
    return [cheap if rng.random() < w else rng.choice(layer.choices) for layer, cheap in zip(space.layers, cheapest)]


def random_archs(space, table, seed: int, n_uniform: int, targets: list[float],
                 keep_blind: bool = False) -> tuple[list, list]:
    """N uniform random architectures, and one rejection-sampled to each target latency (within MATCH_TOL); unless
    ``keep_blind``, only architectures that can see the image (the families' own rule, :func:`blind_note`)."""
    rng = random.Random(seed * 7919 + 1)

    def sees(ch: list[str]) -> bool:
        return keep_blind or not blind_note(space, ch)

    uniform = []
    while len(uniform) < n_uniform:
        ch = [rng.choice(layer.choices) for layer in space.layers]
        if sees(ch):
            uniform.append(make_arch(space, ch, table, None, {"derived": "random-uniform"}))
    cheapest = list(table.model(space).cheapest())
    matched = []
    for target in targets:
        best, best_err = None, float("inf")
        for _ in range(20000):
            ch = _proposal(space, cheapest, rng)
            err = abs(table.model(space).exact(ch) - target) / target
            if err < best_err and sees(ch):
                best, best_err = ch, err
            if best_err <= MATCH_TOL:
                break
        matched.append(make_arch(space, best, table, None, {"derived": "random-matched", "target_ms": target,
                                                            "rel_err": best_err}))
    return uniform, matched


# ------------------------------------------------------------------------------------------------ retrain, measure


class Trainer:
    """The one retrain recipe, cached by architecture digest (the same architecture, seed and data train alike)."""

    def __init__(self, tcfg: TrainConfig, splits: Splits, out: Path, device, measure: bool):
        self.tcfg, self.splits, self.out, self.device, self.measure = tcfg, splits, out, device, measure
        self.cache: dict[str, dict] = {}

    def __call__(self, arch) -> dict:
        key = arch.digest()
        if key not in self.cache:
            d = self.out / key
            tr = retrain(arch, self.tcfg, d if self.measure else None, splits=self.splits)
            seen, total = input_coverage(arch.space, arch.choices)
            row = {"digest": key, "ops": " ".join(arch.choices), "input_seen": seen / total,
                   "predicted_ms": arch.predicted_ms, "params": arch.params, "val_acc": tr.val_acc,
                   "test_acc": tr.test_acc, "train_s": tr.wall_s, "measured_ms": None}
            if self.measure:
                path, _ = export_arch(arch, d / "model.onnx", tr.weights)
                res = measure_model(path, self.device, QUICK_PROTOCOL)
                row["measured_ms"] = summarize(res.samples_ms).median_ms if res.ok else None
            self.cache[key] = row
        return dict(self.cache[key])


# ------------------------------------------------------------------------------------------------ one seed


def one_seed(seed: int, sc: Scale, table_path: Path, splits: Splits, trainer: Trainer, out: Path,
             own_sets: list[str] = (), keep_blind: bool = False) -> dict:
    table = load_table(table_path)
    space = get_space(sc.space)
    res: dict[str, dict] = {}

    def method(name: str, archs: list, wall: float, npass: float) -> None:
        rows = [trainer(a) for a in archs]
        res[name] = {"rows": rows, "search_s": wall, "passes": npass}
        log(f"  seed {seed} {name}: " + ", ".join(f"{r['predicted_ms']:.3f} ms {r['test_acc'] * 100:.1f} %"
                                                  for r in rows))

    for name, tag in (("hwnas", "hwnas"), ("seed", "seed"), ("darts-cc", "darts-cc")):
        sets = list(own_sets) if name in ("hwnas", "seed") else []  # --search-set: the paper's methods only
        cfg = searched(name, sc, table_path, seed, sets)
        log(f"seed {seed}: {name} search ({cfg.epochs} epochs on {cfg.train_limit} samples) ...")
        run, wall, npass = run_search(cfg, out / f"{name}-s{seed}", splits)
        archs, derive_s = family(run, sc.members, tag, keep_blind)
        method(name, archs, wall + derive_s, npass)
    fb_archs, fb_wall, fb_pass = [], 0.0, 0.0
    for i, k in enumerate(FBNET_KAPPAS):
        log(f"seed {seed}: fbnet run {i + 1}/{len(FBNET_KAPPAS)} at kappa {k:.3g} ...")
        cfg = searched("fbnet", sc, table_path, seed, [f"control.weights=[{float(k)}]"])
        run, wall, npass = run_search(cfg, out / f"fbnet{i}-s{seed}", splits)
        fb_archs.append(make_arch(run.space, run.choices({}), table, {"kappa": float(k)}, {"derived": "fbnet"}))
        fb_wall, fb_pass = fb_wall + wall, fb_pass + npass
    method("fbnet-8", fb_archs, fb_wall, fb_pass)
    targets = [r["predicted_ms"] for m in ("hwnas", "seed") for r in res[m]["rows"]]
    uniform, matched = random_archs(space, table, seed, sc.members, targets, keep_blind)
    method("random-uniform", uniform, 0.0, 0.0)
    method("random-matched", matched, 0.0, 0.0)
    return res


# ------------------------------------------------------------------------------------------------ figures


def hv_of(rows: list[dict], ref: float, lat_key: str) -> float:
    pts = [(r[lat_key], r["test_acc"]) for r in rows if r.get(lat_key)]
    return hypervolume(pts, ref, 0.0) / ref


def figures(per_seed: list[dict], lat_key: str) -> dict:
    methods = list(per_seed[0])
    hv = {m: [] for m in methods}
    for res in per_seed:
        ref = 1.2 * max(r[lat_key] for m in methods for r in res[m]["rows"] if r.get(lat_key))
        for m in methods:
            hv[m].append(hv_of(res[m]["rows"], ref, lat_key))
        n_h, rnd = len(res["hwnas"]["rows"]), res["random-matched"]["rows"]
        for fam, part in (("hwnas", rnd[:n_h]), ("seed", rnd[n_h:])):  # the random twins of that family only
            hv.setdefault(f"random-matched-{fam}", []).append(hv_of(part, ref, lat_key))
    diffs = {}
    for fam in ("hwnas", "seed"):
        d = []
        for res in per_seed:
            n_h = len(res["hwnas"]["rows"])
            rnd = res["random-matched"]["rows"]
            rnd = rnd[:n_h] if fam == "hwnas" else rnd[n_h:]
            d += [a["test_acc"] - b["test_acc"] for a, b in zip(res[fam]["rows"], rnd)]
        diffs[fam] = d
    return {"hv": hv, "matched_diff": diffs}


def _ms(v: list[float], scale: float = 1.0, digits: int = 4) -> str:
    a = np.asarray(v, dtype=float) * scale
    sd = float(a.std(ddof=1)) if len(a) > 1 else float("nan")
    return f"{a.mean():.{digits}f} +- {sd:.{digits}f}"


def _beats(d: np.ndarray) -> bool:
    """Goal 1's test: the mean per-seed difference exceeds 2 std over seeds (never with one seed)."""
    return bool(len(d) > 1 and d.mean() > 2 * float(d.std(ddof=1)))


def print_report(per_seed: list[dict], fig: dict, head: str) -> dict:
    print()
    print(head)
    for m in per_seed[0]:
        print(f"-- {m}: hypervolume {_ms(fig['hv'][m])}; search "
              f"{_ms([r[m]['search_s'] for r in per_seed], digits=1)} s, "
              f"{_ms([r[m]['passes'] for r in per_seed], digits=1)} passes over the data")
        for s, res in enumerate(per_seed):
            print(f"   seed {s}: " + "  ".join(
                f"{r['predicted_ms']:.3f}" + (f"/{r['measured_ms']:.3f}" if r.get("measured_ms") else "")
                + f" ms {r['test_acc'] * 100:.1f} %" for r in res[m]["rows"]))
    goals = {}
    for fam in ("hwnas", "seed"):
        hv_f, hv_r = np.array(fig["hv"][fam]), np.array(fig["hv"][f"random-matched-{fam}"])
        d, du = hv_f - hv_r, hv_f - np.array(fig["hv"]["random-uniform"])
        g1, g1u = _beats(d), _beats(du)
        cost = np.array([r[fam]["search_s"] / r["fbnet-8"]["search_s"] for r in per_seed])
        g2 = bool(hv_f.mean() >= np.mean(fig["hv"]["fbnet-8"]) and cost.mean() <= 0.25)
        diffs = np.array(fig["matched_diff"][fam]) * 100
        g3 = bool(diffs.mean() >= 1.0)
        print(f"== goals for the {fam} family")
        print(f"   1a. hypervolume beats uniform random architectures by > 2 std over seeds: diff {_ms(du)} "
              f"-> {'PASS' if g1u else 'MISS'} (reach in latency and choice together)")
        print(f"   1b. hypervolume beats its random twins (matched latencies) by > 2 std over seeds: diff {_ms(d)} "
              f"-> {'PASS' if g1 else 'MISS'} (choice alone, at the family's own latencies)")
        print(f"   2. hypervolume >= the 8 fbnet runs' ({hv_f.mean():.4f} vs {np.mean(fig['hv']['fbnet-8']):.4f}) at "
              f"<= 0.25x their search cost ({cost.mean():.3f}x) -> {'PASS' if g2 else 'MISS'}")
        print(f"   3. members beat their random twins (matched on predicted latency, within {MATCH_TOL:.0%}) by >= 1 "
              f"pp: {_ms(diffs, digits=2)} pp over {len(diffs)} pairs -> {'PASS' if g3 else 'MISS'}")
        goals[fam] = {"g1": g1, "g1_uniform": g1u, "g2": g2, "g3": g3, "hv_diff": d.tolist(),
                      "hv_diff_uniform": du.tolist(), "cost_ratio": cost.tolist(),
                      "matched_diff_pp": diffs.tolist()}
    return goals


def seed_result(seed: int, sc: Scale, data: str, a, table_path: Path, device, out: Path) -> dict:
    """Everything one seed runs, as plain JSON: the per-method results, the data note and the split sizes."""
    space = get_space(sc.space)
    splits, note = load_subsets(data, space, seed, sc, a.data_dir)
    tcfg = TrainConfig(data=splits.name, epochs=sc.retrain_epochs, batch_size=sc.batch_size, seed=seed)
    trainer = Trainer(tcfg, splits, out / f"models-s{seed}", device, a.measure)
    res = one_seed(seed, sc, table_path, splits, trainer, out, a.search_set, a.keep_blind)
    cal = load_table(table_path).calibration
    return {"res": res, "note": note, "data": splits.name, "keep_blind": a.keep_blind,
            "space_ms": space_range(table_path, space), "sizes": [len(splits.train), len(splits.val), len(splits.test)],
            "calibration": None if cal is None else cal.get("model")}


def space_range(table_path: Path, space) -> list[float]:
    """[fastest, slowest] predicted ms over every architecture of the space (the table is a per-layer sum): the
    widest span any family can reach on this table."""
    m = load_table(table_path).model(space)
    return [m.lowest(), float(m.const_ms + np.nanmax(m.entries, axis=1).sum())]


def print_spans(per_seed: list[dict], space_ms: list[float] | None) -> None:
    """Each family's predicted-latency span (slowest / fastest member) per seed, against the space's own span."""
    room = f" (the space spans {space_ms[0]:.3f}-{space_ms[1]:.3f} ms, {space_ms[1] / space_ms[0]:.2f}x)" \
        if space_ms else ""
    for fam in ("hwnas", "seed", "darts-cc"):
        spans = [max(r["predicted_ms"] for r in res[fam]["rows"]) / min(r["predicted_ms"] for r in res[fam]["rows"])
                 for res in per_seed]
        print(f"== {fam} family span: " + ", ".join(f"{x:.2f}x" for x in spans) + room)


def print_blind(per_seed: list[dict]) -> None:
    """Per method: how many architectures see under BLIND_BELOW of the input's pixels, and what they reach (rows of
    seed files from before ``input_seen`` was recorded are left out)."""
    parts = []
    for name in per_seed[0]:
        rows = [r for res in per_seed for r in res[name]["rows"] if "input_seen" in r]
        if not rows:
            continue
        blind = [r["test_acc"] for r in rows if r["input_seen"] < BLIND_BELOW]
        parts.append(f"{name} {len(blind)}/{len(rows)}" + (f" ({min(blind):.1%}-{max(blind):.1%})" if blind else ""))
    if parts:
        print(f"== architectures that see < {BLIND_BELOW:.0%} of the input's pixels (test acc): " + ", ".join(parts))


def run_seeds(seeds: int, sc: Scale, data: str, a, table_path: Path, device, out: Path) -> list[dict]:
    """Every seed, ``--jobs`` at a time: with more than one job each seed is its own process (one torch thread
    each), writing ``seed-N.json`` that this process reads back."""
    if a.jobs <= 1:
        return [seed_result(s, sc, data, a, table_path, device, out) for s in range(seeds)]
    import subprocess

    base = [sys.executable, __file__, "--data", data, "--device", a.device, "--table", str(table_path),
            "--threads", str(a.threads), "--out", str(a.out)] + (["--quick"] if a.quick else []) \
        + (["--measure"] if a.measure else []) + (["--data-dir", a.data_dir] if a.data_dir else []) \
        + [f"--search-set={x}" for x in a.search_set] + ["--retrain-epochs", str(sc.retrain_epochs)] \
        + (["--keep-blind"] if a.keep_blind else [])
    todo, running, failed = list(range(seeds)), [], []
    while todo or running:
        while todo and len(running) < a.jobs:
            s = todo.pop(0)
            log_f = open(out / f"seed-{s}.log", "w")
            running.append((s, subprocess.Popen(base + ["--only-seed", str(s)], stdout=log_f,
                                                stderr=subprocess.STDOUT), log_f))
            log(f"seed {s}: started in its own process (log {out / f'seed-{s}.log'})")
        time.sleep(2)
        for item in list(running):
            s, proc, log_f = item
            if proc.poll() is not None:
                running.remove(item)
                log_f.close()
                log(f"seed {s}: done (exit {proc.returncode})")
                if proc.returncode != 0:
                    failed.append(s)
    if failed:
        raise SystemExit(f"bench_nas: seed(s) {failed} failed; see {out}/seed-N.log")
    return [json.loads((out / f"seed-{s}.json").read_text()) for s in range(seeds)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny subsets, 2 seeds (a few minutes)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3; --quick 2)")
    ap.add_argument("--data", default=None, help="fashion-mnist when its loader reads it here, else digits")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--device", default="cpu-1t", help="device of the latency table (and of --measure)")
    ap.add_argument("--table", type=Path, default=None, help="an existing table of the space (default: measured)")
    ap.add_argument("--measure", action="store_true", help="also export and time every architecture on --device")
    ap.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                    help="fit no calibration when the table has none (raw per-op sums then; a table's stored "
                         "calibration is kept either way, as in hwnas run). Default: fit it on random whole networks "
                         "first, so predictions, the twins' matching and kappa's scale exclude per-op session overhead")
    ap.add_argument("--retrain-epochs", type=int, default=None, metavar="N",
                    help="epochs of the one retrain recipe (default: the scale's, full 10, quick 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run at once, each in its own process (2 on 2 cores)")
    ap.add_argument("--only-seed", type=int, default=None, help=argparse.SUPPRESS)  # a --jobs worker
    ap.add_argument("--report-only", action="store_true",
                    help="print the report again from the seed-N.json files of an earlier --jobs run in --out")
    ap.add_argument("--search-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for the hwnas and seed searches only, e.g. sampler=lean or "
                         "train_limit=1200 (at most the retrain subset); repeatable")
    ap.add_argument("--keep-blind", action="store_true",
                    help="families keep (and random architectures may be) networks whose logits depend on under a "
                         "quarter of the input's pixels; default: left out everywhere but the fbnet runs' argmax")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_nas"))
    a = ap.parse_args()
    sc = SCALES["quick" if a.quick else "full"]
    if a.retrain_epochs is not None:
        if a.retrain_epochs < 1:
            ap.error(f"--retrain-epochs {a.retrain_epochs}: give at least 1")
        sc = dataclasses.replace(sc, retrain_epochs=a.retrain_epochs)
    seeds = a.seeds or sc.seeds
    torch.set_num_threads(a.threads)
    out = a.out / ("quick" if a.quick else "full")
    data = a.data or default_data()
    device = get_device(a.device)
    if a.only_seed is not None:  # a worker of run_seeds: the parent made the table and the folder
        r = seed_result(a.only_seed, sc, data, a, a.table, device, out)
        atomic_write_text(out / f"seed-{a.only_seed}.json", json.dumps(r) + "\n")
        return
    t_all = time.perf_counter()
    if a.report_only:
        results = [json.loads((out / f"seed-{s}.json").read_text()) for s in range(seeds)]
        prev = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
        if "scale" in prev:  # the run's own sizes (e.g. its --retrain-epochs), not today's defaults
            sc = Scale(**prev["scale"])
        if "search_set" in prev:  # the seed files were searched with these: the report keeps them (and the wall)
            if a.search_set and a.search_set != prev["search_set"]:
                raise SystemExit(f"{out / 'summary.json'}: searched with --search-set {prev['search_set']}, not "
                                 f"{a.search_set}; drop --search-set with --report-only")
            a.search_set = prev["search_set"]
        a.jobs, a.threads = prev.get("jobs", a.jobs), prev.get("threads", a.threads)  # the head names the run's
        return report(results, sc, seeds, a, out, t_all, prev.get("wall_s"))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    space = get_space(sc.space)
    notes: list[str] = []
    rcfg = RunConfig(device=a.device, space=sc.space, table=str(a.table or out / "table.csv"), quick=sc.quick_protocol)
    table_path = ensure_table(rcfg, device, space, out, lambda e: None, notes)
    if a.calibrate:  # workers read the calibration stored beside the table
        ccfg = dataclasses.replace(rcfg, verify_n=3 if a.quick else 10, calib_n=12 if a.quick else 16)
        if load_table(table_path).calibration is None:
            log(f"calibrating {table_path} on {ccfg.calib_n} + {ccfg.verify_n} random whole networks "
                f"(--no-calibrate: raw sums) ...")
        ensure_calibration(ccfg, device, space, Path(table_path), out, lambda e: None, notes)
    for n in notes:
        log(n)
    results = run_seeds(seeds, sc, data, a, Path(table_path), device, out)
    report(results, sc, seeds, a, out, t_all)


def _cal_note(result: dict) -> str:
    """How the seed's predictions were priced: the calibration's model, raw sums, or unrecorded (an older run)."""
    if "calibration" not in result:
        return "calibration unrecorded"
    return "raw per-op sums" if result["calibration"] is None else f"calibrated: {result['calibration']}"


def report(results: list[dict], sc: Scale, seeds: int, a, out: Path, t_all: float,
           wall_s: float | None = None) -> None:
    """Print the report and write summary.json; ``wall_s``: the run's own wall time (a --report-only re-print, which
    writes summary-measured.json or summary-predicted.json instead and leaves the run's own summary.json alone)."""
    per_seed = [r["res"] for r in results]
    data_notes = sorted({r["note"] for r in results if r["note"]})
    lat_key = "measured_ms" if a.measure else "predicted_ms"
    fig = figures(per_seed, lat_key)
    n_tr, n_va, n_te = results[0]["sizes"]
    head = (f"== bench_nas ({'quick' if a.quick else 'full'}): {sc}; data {results[0]['data']} "
            f"(train/val/test {n_tr}/{n_va}/{n_te}), {seeds} seeds, table "
            f"{a.device} ({_cal_note(results[0])}), latency {'measured' if a.measure else 'predicted'}; "
            f"torch {torch.__version__}, "
            f"{a.threads} thread(s) x {max(1, a.jobs)} job(s), {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs" + (f"; hwnas/seed searches with {a.search_set}" if a.search_set else "")
            + ("" if "keep_blind" not in results[0] else "; networks that cannot see the image "
               + ("kept" if results[0]["keep_blind"] else "left out of the families and random architectures"))
            + "".join(f"\n   note: {n}" for n in data_notes))
    goals = print_report(per_seed, fig, head)
    print_spans(per_seed, results[0].get("space_ms"))
    print_blind(per_seed)
    wall = time.perf_counter() - t_all if wall_s is None else wall_s
    path = out / ("summary.json" if wall_s is None else f"summary-{'measured' if a.measure else 'predicted'}.json")
    print(f"wall {wall:.0f} s; summary {path}")
    summary = {"scale": dataclasses.asdict(sc), "data": results[0]["data"], "search_set": a.search_set,
               "seeds": per_seed, "figures": fig, "goals": goals, "wall_s": wall, "jobs": a.jobs,
               "threads": a.threads}
    atomic_write_text(path, json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()

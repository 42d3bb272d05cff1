"""Issue 12 items 3 and 4: a per-key time limit from the protocol; resume checks (protocol, fingerprint)."""

import time

import pytest

from profiler.latency.tables import TableWriter
from profiler.measuring.devices import parse_devices
from profiler.measuring.measure import measure_space, sweep
from profiler.measuring.protocol import Protocol, ProtocolError
from profiler.measuring.runners import MeasureResult
from profiler.measuring.runners.base import LocalRunner
from profiler.measuring.timing import KeyTimeout, time_calls
from profiler.spaces.space import get_space

SPACE = "darts-3ops:C=8,cells=3,nodes=2"
FAST = {"warmup_s": 0.01, "min_samples": 3, "min_seconds": 0.01, "retries": 0, "target_sample_ms": 1.0}


def test_key_timeout_is_derived_and_validated():
    p = Protocol()
    assert p.key_timeout_s == pytest.approx((0.2 + 5.0) * 3 * 3.0)
    assert Protocol.from_dict({"max_seconds": 1.0, "warmup_s": 0.0, "retries": 0}).key_timeout_s == pytest.approx(3.0)
    assert Protocol.from_dict({"key_timeout_s": 7}).key_timeout_s == 7.0
    assert Protocol.from_dict(p.to_dict()) == p
    for bad in (0, -1, float("inf"), float("nan"), "x"):
        with pytest.raises(ProtocolError, match="key_timeout_s"):
            Protocol.from_dict({"key_timeout_s": bad}, "devices.yaml: cpu.protocol")


def test_time_calls_stops_at_the_limit():
    t0 = time.perf_counter()
    with pytest.raises(KeyTimeout, match="timed out after 0.05 s"):
        time_calls(lambda: time.sleep(0.01), 10.0, 1000, 10.0, 10.0, 1, 1.0, limit_s=0.05)
    assert time.perf_counter() - t0 < 1.0


class SlowRunner(LocalRunner):
    """A fake runner whose first key runs past its limit (as the real runners report it: a failed result)."""

    name = "slow"

    def fingerprint(self):
        return {"runtime": "slow"}

    def measure(self, request, protocol):
        try:
            fn = (lambda: time.sleep(0.02)) if request.key == self.slow else (lambda: None)
            s, c = time_calls(fn, 0.0, 3, 0.0, 1.0, 1, 1.0, limit_s=protocol.key_timeout_s)
            return MeasureResult(request.key, tuple(max(x, 1e-3) for x in s), c)
        except Exception as e:
            return MeasureResult.failed(request.key, e)


def test_sweep_turns_a_timeout_into_an_error_row_and_goes_on(tmp_path):
    keys = get_space(SPACE).candidate_keys()[:3]
    runner = SlowRunner()
    runner.slow = keys[0]
    meta = {"schema_version": 1, "key_version": 1, "device": "x", "space": SPACE}
    with TableWriter(tmp_path / "t.csv", meta) as w:
        prog = sweep(keys, runner, Protocol(retries=0, key_timeout_s=0.01), w)
    rows = {r.key: r for r in prog.rows}
    assert rows[keys[0]].status == "error" and "timed out after 0.01 s" in rows[keys[0]].error
    assert all(rows[k].status != "error" for k in keys[1:])


def test_real_onnxruntime_key_with_a_tiny_limit_is_an_error_row(tmp_path, ort_sweep):
    space = get_space(SPACE)
    t0 = time.perf_counter()
    s = ort_sweep({**FAST, "min_seconds": 5.0, "max_seconds": 5.0, "key_timeout_s": 0.05}, space, tmp_path / "t.csv",
                  only="*avg_pool*", name="cpu-fast")
    assert s.measured > 0 and s.errors == s.measured
    assert all("timed out after 0.05 s" in r.error for r in s.rows)
    assert time.perf_counter() - t0 < 5.0 * s.measured


from profiler.latency.tables import MIXED_COLUMNS, TableError, load_table, setup_hash  # noqa: E402


class OkRunner(LocalRunner):
    name = "ok"

    def __init__(self, host="a"):
        self.host = host

    def fingerprint(self):
        return {"runtime": "ok", "hostname": self.host}

    def measure(self, request, protocol):
        return MeasureResult(request.key, (1.0, 1.0, 1.0), 1)


def _device(**protocol):
    return parse_devices({"devices": {"cpu-fast": {"runtime": "onnxruntime", "threads": 1,
                                                   "protocol": {**FAST, **protocol}}}}, "t")["cpu-fast"]


def test_resume_under_another_protocol_or_fingerprint_is_refused(tmp_path):
    space, out = get_space(SPACE), tmp_path / "t.csv"
    first = measure_space(_device(), space, OkRunner(), out, only="*avg_pool*")
    assert first.measured > 0
    with pytest.raises(TableError) as e:
        measure_space(_device(max_seconds=1.0), space, OkRunner(), out)
    msg = str(e.value)
    assert str(out) in msg and "protocol" in msg and "max_seconds 5.0 -> 1.0" in msg and "--fresh" in msg
    assert "--mixed" in msg and "\n" not in msg
    with pytest.raises(TableError, match=r"fingerprint \(hostname 'a' -> 'b'\)"):
        measure_space(_device(), space, OkRunner("b"), out)
    # the same setup resumes as before
    assert measure_space(_device(), space, OkRunner(), out, only="*avg_pool*").measured == 0


def test_mixed_resume_records_each_rows_setup(tmp_path):
    space, out = get_space(SPACE), tmp_path / "t.csv"
    measure_space(_device(), space, OkRunner(), out, only="*avg_pool*")
    old_hash = setup_hash(load_table(out).meta)
    s = measure_space(_device(), space, OkRunner("b"), out, only="*classifier*", mixed=True)
    assert s.measured > 0
    t = load_table(out)
    assert list(t.to_frame().columns) == MIXED_COLUMNS
    setups = {r["op"]: r["setup"] for r in t.rows.values()}
    assert setups["avg_pool_3x3"] == old_hash and setups["classifier"] != old_hash
    assert set(t.meta["setups"]) == {old_hash, setups["classifier"]}
    assert t.meta["setups"][setups["classifier"]]["fingerprint"]["hostname"] == "b"
    # resuming the mixed table again keeps its column
    measure_space(_device(), space, OkRunner("b"), out, only="*darts_stem*", mixed=True)
    assert list(load_table(out).to_frame().columns) == MIXED_COLUMNS


def test_resume_with_a_differing_set_is_refused_in_one_line():
    from search.config import ConfigError, apply_overrides, check_resume_overrides, config_to_dict, preset

    cfg = preset("hwnas", space="darts-3ops:C=8,cells=3,nodes=2", tables=("t.csv",), data="digits", epochs=2)
    stored = config_to_dict(cfg)
    same = apply_overrides(cfg, ["epochs=5", f"loss_beta={cfg.loss_beta}"])
    check_resume_overrides(stored, same, ["epochs=5", f"loss_beta={cfg.loss_beta}"], "run/config.json")
    items = ["loss_beta=0.123", "weights_opt.lr=0.5"]
    with pytest.raises(ConfigError) as e:
        check_resume_overrides(stored, apply_overrides(cfg, items), items, "run/config.json")
    msg = str(e.value)
    assert "run/config.json" in msg and "loss_beta=0.123" in msg and "weights_opt.lr=0.5" in msg
    assert "ignored" in msg and "--out" in msg and "\n" not in msg

"""The emulated aarch64 board (bench/arm_board.sh): cross-compiled ops measured over TVM RPC on qemu-user.

Opt-in (HWNAS_EMULATED=1): the first run builds an aarch64 Debian root (~7 min; cached under ~/.cache/hwnas), and
it needs root, debootstrap, qemu-user-static, binfmt_misc and g++-aarch64-linux-gnu. Emulated timings prove the
path; they are not the performance of any board.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from profiler.latency.tables import load_table
from profiler.measuring.devices import PROJECT_DEVICES
from profiler.measuring.measure import select_keys
from profiler.measuring.rpc import free_port
from profiler.spaces.space import get_space

pytestmark = [
    pytest.mark.emulated,
    pytest.mark.skipif(os.environ.get("HWNAS_EMULATED") != "1",
                       reason="opt-in: HWNAS_EMULATED=1 (emulated aarch64 board: root, qemu-user-static, "
                              "debootstrap, g++-aarch64-linux-gnu)"),
]

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "arm_board.sh"
SPACE = "darts-3ops:C=8,cells=5"
ONLY = "*|1x8x32x32|*"  # avg_pool_3x3, skip_connect (no kernel), sep_conv_3x3


def test_emulated_board_measures_cross_compiled_ops_over_rpc(tmp_path):
    port = free_port()
    data = yaml.safe_load(PROJECT_DEVICES.read_text())
    entry = data["devices"]["rpi4-emu"]
    entry["rpc"]["tracker"] = f"127.0.0.1:{port}"
    devices = tmp_path / "devices.yaml"
    devices.write_text(yaml.safe_dump({"schema": 1, "devices": {"rpi4-emu": entry}}))
    out = tmp_path / "emu.csv"
    env = {**os.environ, "HWNAS_ARM_PORT": str(port), "HWNAS_DEVICES": str(devices),
           "HWNAS_ARM_RUN": str(tmp_path / "run")}
    r = subprocess.run(["bash", str(SCRIPT), "run", "--space", SPACE, "--only", ONLY, "--out", str(out), "--fresh"],
                       env=env, capture_output=True, text=True, timeout=3600)
    print(r.stderr[-4000:])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "EMULATED" in r.stderr
    table = load_table(out)
    keys = select_keys(get_space(SPACE).candidate_keys(1), ONLY)
    assert set(table.rows) == set(keys)
    assert all(row["status"] in ("ok", "noisy") for row in table.rows.values())
    fp = table.meta["fingerprint"]
    assert fp["target_triple"].startswith("aarch64") and fp["rpc"]["key"] == "rpi4-emu"
    assert fp["remote"].get("arch", "aarch64") == "aarch64" and "error" not in fp["remote"]
    conv = next(k for k in keys if "|sep_conv_3x3|" in k)
    assert table.rows[conv]["median_ms"] > 0

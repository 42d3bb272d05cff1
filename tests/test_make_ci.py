"""`make test` is what CI runs: one package list, read by .ci/deps.sh; `make run` needs only the core."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def deps(tmp_path: Path, lines: list[str], *args: str) -> subprocess.CompletedProcess:
    lst = tmp_path / "apt-packages"
    lst.write_text("# comment\n\n" + "\n".join(lines) + "\n")
    env = dict(os.environ, HWNAS_APT_PACKAGES=str(lst))
    return subprocess.run(["bash", str(ROOT / ".ci" / "deps.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_deps_lists_the_tests_that_skip_and_the_command(tmp_path):
    r = deps(tmp_path, ["bash  bash  nothing", "no-such-pkg  no-such-binary-xyz  tests/test_x.py (the x board)",
                        "other-pkg  /no/such/path  tests/test_y.py"], "--check")
    assert r.returncode == 0, r.stderr
    assert "no-such-pkg: tests/test_x.py (the x board)" in r.stdout and "other-pkg: tests/test_y.py" in r.stdout
    assert "bash:" not in r.stdout
    assert "sudo apt-get install -y --no-install-recommends no-such-pkg other-pkg" in r.stdout


def test_deps_all_present(tmp_path):
    r = deps(tmp_path, ["bash bash nothing", "x /  root"])
    assert r.returncode == 0 and "all present" in r.stdout


def test_package_list_is_the_one_place():
    pkgs = [ln.split()[0] for ln in (ROOT / ".ci" / "apt-packages").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    assert {"openssh-server", "openssh-client", "g++-aarch64-linux-gnu", "dataset-fashion-mnist"} <= set(pkgs)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "exec make test" in ci and "apt-get" not in ci  # CI runs the README's command, nothing else
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: deps setup$", make, re.M) and "bash .ci/deps.sh" in make
    run_deps = re.search(r"^run: (.*)$", make, re.M).group(1)
    assert run_deps == "setup-core"
    assert "pip install -q -e .\n" in make and "'.[tvm,ssh,test]'" in make


def test_the_main_job_imports_no_extra():
    """`hwnas run --device cpu` (what `make run` installs for) needs neither TVM, SSH nor pytest."""
    code = ("import sys; import search.cli, search.pipeline, profiler.measuring.runners.ort, profiler.latency.verify, "
            "profiler.measuring.measure, search.report;"
            "bad = sorted(m for m in ('tvm', 'paramiko', 'pytest', 'xgboost', 'cloudpickle', 'tornado') "
            "if m in sys.modules); print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr

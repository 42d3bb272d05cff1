"""``hwprof doctor --device NAME``: can this device be measured, and if not, what to do.

Each runtime has one check function ``(device) -> list[Check]`` registered with :func:`register_checks`; the
checks are values (name, ok, detail, fix), printed by the CLI one per line. A failed check that later checks
depend on stops that runtime's list (no cascade of follow-up failures).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable

from .devices import Device
from .protocol import Protocol

# the tiny op every doctor times: an average pool on a small tensor (compiles in well under a second)
TINY_OP = ("avg_pool_3x3", (1, 8, 8, 8), 8, 1)
TINY_PROTOCOL = Protocol(warmup_s=0.05, min_samples=5, min_seconds=0.05, max_seconds=2.0, retries=0)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


CheckFn = Callable[[Device], list[Check]]
CHECKS: dict[str, CheckFn] = {}


def register_checks(runtime: str) -> Callable[[CheckFn], CheckFn]:
    def deco(fn: CheckFn) -> CheckFn:
        CHECKS[runtime] = fn
        return fn

    return deco


def run_doctor(device: Device) -> list[Check]:
    """All checks of ``device``'s runtime, in order. Never raises for a device problem: that is a failed check."""
    fn = CHECKS.get(device.runtime)
    if fn is None:
        return [Check("runtime", False, f"no doctor checks for runtime {device.runtime!r}",
                      "measure one op with hwprof measure --only to test it")]
    try:
        return fn(device)
    except Exception as e:  # noqa: BLE001 - an unexpected error is a failed check, not a traceback
        return [Check("doctor", False, f"unexpected {type(e).__name__}: {e}", "report this as a bug")]


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.ok]


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def tiny_op_check(device: Device, runner: Any) -> Check:
    """Export the tiny op and time it with ``runner`` under the short doctor protocol."""
    from .export import export_key
    from .keys import op_key
    from .runners.base import MeasureRequest
    from .stats import summarize

    op, shape, c_out, stride = TINY_OP
    key = op_key(op, shape, c_out, stride, {}, "float32")
    t0 = time.perf_counter()
    exp = export_key(key)
    res = runner.measure(MeasureRequest(key, exp.path, exp.input_shape), TINY_PROTOCOL)
    wall = time.perf_counter() - t0
    if not res.ok:  # type: ignore[attr-defined]
        return Check("tiny op", False, f"{key}: {res.error}",  # type: ignore[attr-defined]
                     "fix the checks above; the error names the failing step")
    s = summarize(res.samples_ms)  # type: ignore[attr-defined]
    return Check("tiny op", True, f"{op} {'x'.join(map(str, shape))}: median {s.median_ms:.4f} ms "
                                  f"(CV {s.cv * 100:.1f} %, {s.n} samples, {wall:.1f} s incl. compile)")


@register_checks("tvm")
def tvm_checks(device: Device) -> list[Check]:
    out: list[Check] = []
    try:
        from .runners.tvm_runner import TvmRunner, TvmSetupError, arch_of, make_target, target_triple, tvm_version
    except ImportError as e:
        return [Check("tvm installed", False, _one_line(e), "pip install -e '.[tvm]' (apache-tvm, apache-tvm-ffi)")]
    out.append(Check("tvm installed", True, f"apache-tvm {tvm_version()} on this host"))
    try:
        target = make_target(device, for_tuning=device.tune_trials > 0)
    except TvmSetupError as e:
        return out + [Check("target", False, str(e), "fix target in devices.yaml")]
    t_arch = arch_of(target_triple(target))
    out.append(Check("target", True, f"{target_triple(target)} (arch {t_arch})"))
    if device.cross_compiler:
        found = shutil.which(device.cross_compiler)
        out.append(Check("cross compiler", bool(found), found or f"{device.cross_compiler} not on PATH",
                         "apt-get install g++-aarch64-linux-gnu (or fix cross_compiler in devices.yaml)"))
        if not found:
            return out
    if device.rpc is not None:
        from .rpc import RpcError, TrackerClient

        client = TrackerClient(device.rpc.tracker, timeout_s=min(10.0, device.rpc.request_timeout_s))
        try:
            servers = client.servers()
        except RpcError as e:
            return out + [Check("tracker", False, str(e),
                                f"start it: python -m profiler.rpc tracker --port "
                                f"{device.rpc.tracker.rpartition(':')[2]} (tvm.exec.rpc_tracker on 127.0.0.1)")]
        out.append(Check("tracker", True, f"{device.rpc.tracker} answers, {len(servers)} server(s) registered"))
        mine = [s for s in servers if s.get("key") == f"server:{device.rpc.key}"]
        if not mine:
            keys = sorted({str(s.get("key", "")).split(":", 1)[-1] for s in servers})
            return out + [Check("server", False, f"no rpc_server registered with key {device.rpc.key!r} "
                                                 f"(keys: {', '.join(keys) or 'none'})",
                                f"on the board: TVM_NUM_THREADS={device.threads or 4} python -m tvm.exec.rpc_server "
                                f"--tracker {device.rpc.tracker} --key {device.rpc.key}")]
        out.append(Check("server", True, f"{len(mine)} rpc_server(s) with key {device.rpc.key!r}: "
                                         + ", ".join(":".join(map(str, s.get("addr", []))) for s in mine)))
    runner = TvmRunner(device)
    try:
        try:
            runner.session()
        except Exception as e:  # noqa: BLE001
            return out + [Check("session", False, _one_line(e),
                                "check the server's log; is the key served and free (not busy with another run)?")]
        info = dict(runner._remote)
        where = "remote" if device.rpc is not None else "local rpc_server"
        out.append(Check("session", True, f"{where}: arch {info.get('arch', '?')}, cpu {info.get('cpu', '?')}, "
                                          f"llvm {info.get('llvm_major', '?')}, TVM threads {info.get('threads', '?')}"
                                          f"; RPC protocol compatible (handshake ok)"))
        r_arch = info.get("arch")
        if r_arch is None:
            out.append(Check("target/arch", True, f"target arch {t_arch}; the remote runtime does not report its "
                                                  f"arch (runtime-only build), not checked"))
        else:
            out.append(Check("target/arch", r_arch == t_arch, f"target {t_arch}, remote {r_arch}",
                             f"set target in devices.yaml for {r_arch} (e.g. raspberry-pi/4b-aarch64 or "
                             f"{{kind: llvm, mtriple: {info.get('triple')}}}) and cross_compiler for it"))
            if r_arch != t_arch:
                return out
        want = device.threads
        got = info.get("threads")
        if want and got is not None:
            out.append(Check("threads", int(got) == want, f"device.threads {want}, server runs {got}",
                             f"restart the rpc_server with TVM_NUM_THREADS={want} in its environment"))
        out.append(tiny_op_check(device, runner))
    finally:
        runner.close()
    return out


@register_checks("onnxruntime-ssh")
def ssh_checks(device: Device) -> list[Check]:
    """Reachability (host key verified, key auth, SFTP), the board's arch and versions, threads, one tiny op."""
    from .runners.ssh_runner import SshError, SshRunner

    ssh = device.ssh
    assert ssh is not None  # devices.py requires it for this runtime
    runner = SshRunner(device, connect=False)
    try:
        runner.connect()
    except SshError as e:
        detail, _, fix = str(e).partition("; ")
        return [Check("ssh", False, detail, fix)]
    out = [Check("ssh", True, f"{runner.where}: host key verified against {ssh.known_hosts}, key {ssh.key_file}, "
                              f"SFTP workdir {ssh.workdir}")]
    try:
        try:
            info = runner.board_info()
        except SshError as e:
            detail, _, fix = str(e).partition("; ")
            return out + [Check("board python", False, detail, fix)]
        versions = info.get("versions", {})
        missing = [m for m, v in versions.items() if str(v).startswith("missing")]
        out.append(Check("board python", not missing,
                         f"{ssh.python}: python {info.get('python')}, "
                         + ", ".join(f"{m} {v}" for m, v in versions.items()),
                         f"on the board: {ssh.python} -m pip install onnxruntime numpy"))
        if missing:
            return out
        out.append(Check("board", True, f"{info.get('machine')}, {info.get('cpu_model') or 'cpu ?'}, "
                                        f"{info.get('cores')} cores, governor {info.get('governor')}, "
                                        f"{info.get('os')}"))
        cores = info.get("cores") or 0
        if device.threads and cores:
            out.append(Check("threads", device.threads <= cores, f"device.threads {device.threads}, board has "
                                                                 f"{cores} cores",
                             f"set threads: {cores} (or fewer) in devices.yaml"))
        out.append(tiny_op_check(device, runner))
    finally:
        runner.close()
    return out

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

from profiler.measuring.devices import Device
from profiler.measuring.protocol import Protocol

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
    from profiler.measuring.export import export_key
    from profiler.measuring.runners.base import MeasureRequest
    from profiler.measuring.stats import summarize
    from profiler.spaces.keys import op_key

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
        from profiler.measuring.runners.tvm_runner import (
            TvmRunner,
            TvmSetupError,
            arch_of,
            make_target,
            target_triple,
            tvm_version,
        )
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
        checks, ok = _tracker_checks(device)
        out += checks
        if not ok:
            return out
    runner = TvmRunner(device)
    try:
        checks, ok = _session_checks(device, runner, t_arch)
        out += checks
        if ok:
            out.append(tiny_op_check(device, runner))
    finally:
        runner.close()
    return out


def _tracker_checks(device: Device) -> tuple[list[Check], bool]:
    """The RPC tracker answers and holds a server of the device's key; (checks, whether to go on)."""
    from profiler.measuring.rpc import RpcError, TrackerClient

    client = TrackerClient(device.rpc.tracker, timeout_s=min(10.0, device.rpc.request_timeout_s))
    try:
        servers = client.servers()
    except RpcError as e:
        return [Check("tracker", False, str(e),
                      f"start it: python -m profiler.measuring.rpc tracker --port "
                      f"{device.rpc.tracker.rpartition(':')[2]} (tvm.exec.rpc_tracker on 127.0.0.1)")], False
    out = [Check("tracker", True, f"{device.rpc.tracker} answers, {len(servers)} server(s) registered")]
    mine = [s for s in servers if s.get("key") == f"server:{device.rpc.key}"]
    if not mine:
        keys = sorted({str(s.get("key", "")).split(":", 1)[-1] for s in servers})
        return out + [Check("server", False, f"no rpc_server registered with key {device.rpc.key!r} "
                                             f"(keys: {', '.join(keys) or 'none'})",
                            f"on the board: TVM_NUM_THREADS={device.threads or 4} python -m tvm.exec.rpc_server "
                            f"--tracker {device.rpc.tracker} --key {device.rpc.key}")], False
    out.append(Check("server", True, f"{len(mine)} rpc_server(s) with key {device.rpc.key!r}: "
                                     + ", ".join(":".join(map(str, s.get("addr", []))) for s in mine)))
    return out, True


def _session_checks(device: Device, runner: Any, t_arch: str | None) -> tuple[list[Check], bool]:
    """A session opens (RPC handshake), its arch matches the target's and its threads the device's;
    (checks, whether to go on to the tiny op)."""
    try:
        runner.session()
    except Exception as e:  # noqa: BLE001
        return [Check("session", False, _one_line(e),
                      "check the server's log; is the key served and free (not busy with another run)?")], False
    info = dict(runner._remote)
    where = "remote" if device.rpc is not None else "local rpc_server"
    out = [Check("session", True, f"{where}: arch {info.get('arch', '?')}, cpu {info.get('cpu', '?')}, "
                                  f"llvm {info.get('llvm_major', '?')}, TVM threads {info.get('threads', '?')}"
                                  f"; RPC protocol compatible (handshake ok)")]
    r_arch = info.get("arch")
    if r_arch is None:
        out.append(Check("target/arch", True, f"target arch {t_arch}; the remote runtime does not report its "
                                              f"arch (runtime-only build), not checked"))
    else:
        out.append(Check("target/arch", r_arch == t_arch, f"target {t_arch}, remote {r_arch}",
                         f"set target in devices.yaml for {r_arch} (e.g. raspberry-pi/4b-aarch64 or "
                         f"{{kind: llvm, mtriple: {info.get('triple')}}}) and cross_compiler for it"))
        if r_arch != t_arch:
            return out, False
    want = device.threads
    got = info.get("threads")
    if want and got is not None:
        out.append(Check("threads", int(got) == want, f"device.threads {want}, server runs {got}",
                         f"restart the rpc_server with TVM_NUM_THREADS={want} in its environment"))
    return out, True


@register_checks("onnxruntime-ssh")
def ssh_checks(device: Device) -> list[Check]:
    """Reachability (host key verified, key auth, SFTP), the board's arch and versions, threads, one tiny op."""
    from profiler.measuring.runners.ssh_runner import SshError, SshRunner

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


# -- local runtimes: onnxruntime and torch -------------------------------------------------------------------------

# the whole network whose timing stability the doctor checks: `make run`'s space, a mid-sized architecture
STABILITY_SPACE = "fbnet-cifar:input_size=16,width=0.5"
STABILITY_REPEATS = 6  # short measurements of the network, as hwprof verify samples it (auto calls per sample)
STABILITY_PROTOCOL = Protocol(warmup_s=0.1, min_samples=15, min_seconds=0.25, max_seconds=2.0, retries=0)


def usable_cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_check(device: Device, cores: int) -> Check:
    if device.threads == 0:
        return Check("threads", True, f"threads 0: the runtime's default, all {cores} usable core(s)")
    return Check("threads", device.threads <= cores, f"threads {device.threads}, {cores} usable core(s)",
                 f"set threads: {cores} or fewer in devices.yaml (or use cpu-1t)")


def load_check(cores: int) -> Check:
    """The 1-minute load average against the cores: informational (never fails), it explains noisy timings."""
    import os

    try:
        load = os.getloadavg()[0]
    except OSError:
        return Check("load", True, "load average not readable here")
    busy = load >= max(1.0, cores - 0.5)
    return Check("load", True, f"1-minute load average {load:.2f} on {cores} core(s)"
                               + (" - busy: other jobs will disturb timings" if busy else ""))


def stability_choices(space: Any) -> list[str]:
    """A mid-sized architecture: at every layer the choice in the middle of its list."""
    return [layer.choices[len(layer.choices) // 2] for layer in space.layers]


def robust_cv(samples_ms: list[float]) -> float:
    """1.4826 MAD / median: the spread of the bulk of the samples (a few preempted ones do not count)."""
    import numpy as np

    x = np.asarray(samples_ms, dtype=float)
    med = float(np.median(x))
    return float(1.4826 * np.median(np.abs(x - med)) / med) if med > 0 else 0.0


def stability_verdict(medians_ms: list[float], cvs: list[float], threads_label: str,
                      cv_threshold: float, threads: int = 0) -> Check:
    """How repeatable whole-network timing is: the median robust CV of the samples within a repeat, and how far
    the repeats' medians spread. Within ``cv_threshold``: stable; within twice that: marginal (ok); else
    unstable."""
    import numpy as np

    from profiler.measuring.stats import round_spread

    cv = float(np.median(cvs))
    spread = round_spread(medians_ms)
    worst = max(cv, spread)
    verdict = "stable" if worst <= cv_threshold else ("marginal" if worst <= 2 * cv_threshold else "unstable")
    detail = (f"{verdict} at {threads_label}: whole network {float(np.median(medians_ms)):.3f} ms, CV {cv * 100:.1f} "
              f"% (robust) within a repeat, {len(medians_ms)} repeats' medians within {spread * 100:.1f} % (limit "
              f"{cv_threshold * 100:.0f} %)")
    fewer = "" if threads == 1 else ", or use a 1-thread device (cpu-1t)"
    fix = f"stop other jobs on this machine{fewer}; tables and verifies timed now would likely be marked INVALID"
    return Check("whole-network timing", verdict != "unstable", detail, fix)


def stability_check(device: Device, measure_once: Callable[[], list[float]], threads_label: str) -> Check:
    import numpy as np

    medians, cvs = [], []
    for _ in range(STABILITY_REPEATS):
        samples = measure_once()
        if not samples:
            return Check("whole-network timing", False, "the network gave no samples", "run hwprof measure-model")
        medians.append(float(np.median(samples)))
        cvs.append(robust_cv(samples))
    return stability_verdict(medians, cvs, threads_label, device.protocol.cv_threshold, device.threads)


def _ort_network_check(device: Device, runner: Any) -> Check:
    from profiler.measuring.model_measure import export_network
    from profiler.measuring.runners.base import MeasureRequest
    from profiler.spaces.space import get_space

    space = get_space(STABILITY_SPACE)
    path, _ = export_network(space, stability_choices(space))
    req = MeasureRequest("doctor-network", path, (1, *space.input_shape))

    def once() -> list[float]:
        res = runner.measure(req, STABILITY_PROTOCOL)
        if not res.ok:
            raise RuntimeError(res.error)
        return list(res.samples_ms)

    label = f"{device.threads} thread(s)" if device.threads else f"all {usable_cores()} cores (threads 0)"
    return stability_check(device, once, label)


@register_checks("onnxruntime")
def ort_checks(device: Device) -> list[Check]:
    """onnxruntime and the provider, threads against the usable cores, load, one tiny op, whole-network stability."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        return [Check("onnxruntime installed", False, _one_line(e), "pip install onnxruntime")]
    available = ort.get_available_providers()
    out = [Check("onnxruntime installed", True, f"onnxruntime {ort.__version__}, providers {', '.join(available)}")]
    want = "CUDAExecutionProvider" if device.provider == "cuda" else "CPUExecutionProvider"
    out.append(Check("provider", want in available, f"{want} " + ("available" if want in available else
                                                                   "not offered by this onnxruntime"),
                     "pip install onnxruntime-gpu (with CUDA and a GPU), or pick a CPU device"))
    if want not in available:
        return out
    from profiler.measuring.runners.ort import OrtRunner

    return _local_runner_checks(device, out, OrtRunner, _ort_network_check)


@register_checks("torch")
def torch_checks(device: Device) -> list[Check]:
    """torch and its device, threads, load, one tiny op, whole-network stability (eager module)."""
    try:
        import torch
    except ImportError as e:
        return [Check("torch installed", False, _one_line(e), "make setup (installs the CPU torch pin)")]
    out = [Check("torch installed", True, f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads")]
    if device.torch_device == "cuda":
        ok = torch.cuda.is_available()
        out.append(Check("cuda", ok, torch.cuda.get_device_name(0) if ok else "torch.cuda.is_available() is False",
                         "use torch-cpu, or a CUDA build of torch on a machine with a GPU"))
        if not ok:
            return out
    from profiler.measuring.runners.torch_runner import TorchRunner

    return _local_runner_checks(device, out, TorchRunner, _torch_network_check)


def _local_runner_checks(device: Device, out: list[Check], make_runner, network_check) -> list[Check]:
    """The checks every local runtime shares: threads vs cores, load, one tiny op, whole-network stability."""
    cores = usable_cores()
    out += [threads_check(device, cores), load_check(cores)]
    if not out[-2].ok:
        return out
    runner = make_runner(device)
    try:
        out.append(tiny_op_check(device, runner))
        if out[-1].ok:
            out.append(network_check(device, runner))
    finally:
        runner.close()
    return out


def _torch_network_check(device: Device, runner: Any) -> Check:
    import torch

    from profiler.measuring.timing import time_calls
    from profiler.spaces.network import build_network
    from profiler.spaces.space import get_space

    space = get_space(STABILITY_SPACE)
    torch.manual_seed(0)
    net = build_network(space, stability_choices(space)).eval().to(runner.dev)
    x = torch.randn(1, *space.input_shape, device=runner.dev)
    p = STABILITY_PROTOCOL

    def call() -> None:
        net(x)
        if runner.dev.type == "cuda":
            torch.cuda.synchronize()

    def once() -> list[float]:
        with torch.inference_mode():
            samples, _ = time_calls(call, p.warmup_s, p.min_samples, p.min_seconds, p.max_seconds,
                                    p.calls_per_sample, p.target_sample_ms)
        return samples

    return stability_check(device, once, f"{torch.get_num_threads()} thread(s)")

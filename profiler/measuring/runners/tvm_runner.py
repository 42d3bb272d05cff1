"""TVM runner (Relax): ONNX -> compiled library -> timed over an RPC session. Local and remote are one code path.

* Compile on the host: ``relax.frontend.onnx.from_onnx`` -> ``relax.get_default_pipeline(target)`` (fuses; plain
  ``tvm.compile`` does not on CPU) -> ``tvm.compile`` -> ``export_library`` (host compiler, or the device's
  ``cross_compiler`` such as ``aarch64-linux-gnu-g++``).
* Run over RPC: a remote device (``rpc:`` in devices.yaml) gets a session from its tracker (guarded: a key nobody
  serves or a dead tracker fails within ``rpc.request_timeout_s``); a local device gets a private ``rpc_server``
  on 127.0.0.1 that this runner starts in its own process group with ``TVM_NUM_THREADS`` = ``device.threads``.
  So local is the remote path pointed at localhost (as TVM's own MetaSchedule runners are): the same upload,
  ``relax.VirtualMachine``, ``set_input`` + ``invoke_stateful`` and ``time_evaluator``, a kernel that crashes
  kills a session process and not hwprof, and the thread count is set per device, not once per Python process.
* Timing: ``time_evaluator(number, repeat)`` derived from the :class:`~profiler.measuring.protocol.Protocol`: a warm-up
  evaluator runs ``min_repeat_ms = warmup_s`` and gives the one-call time; ``number`` = calls per sample (as the
  onnxruntime runner picks it), ``repeat`` = samples (at least ``min_samples`` and ``min_seconds``, at most
  ``max_seconds``). Each repeat's mean is one raw sample; ``min_repeat_ms`` stays 0 for the samples so that
  ``calls_per_sample`` is exact.
* Graphs with no kernel (identity ``skip``): the Relax VM would just return its input, and a library without
  kernels fails to cross-link. They are timed as one elementwise copy of the input (``y = x + 0``, variant
  ``copy``): a real, small, positive cost of the same order as onnxruntime's Identity, measured the same way.
* Variants: ``untuned``; ``tuned`` (every MetaSchedule task has a valid record in the persistent database
  ``$HWNAS_CACHE/tvm-tuning/<device>/<onnx-hash>/``, re-used by the next run); ``tune-failed`` (tuning ran but
  some task has no valid record, e.g. the builder timed out on every candidate: the library holds untuned kernels
  for those and is never reported as tuned); ``copy`` (see above).
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from profiler.errors import UserError
from profiler.measuring.devices import Device
from profiler.measuring.protocol import Protocol
from profiler.measuring.rpc import RpcError, RpcProcess, connect_session, request_board, start_server
from profiler.measuring.runners.base import (
    MeasureRequest,
    MeasureResult,
    SequentialRunner,
    host_fingerprint,
    library_versions,
)
from profiler.measuring.timing import KeyTimeout

LOCAL_KEY = "hwprof-local"  # prefix of the private local server's key; each runner adds a random part
VARIANTS = ("untuned", "tuned", "tune-failed", "copy")
# output agreement with onnxruntime (float32, small ops): beyond this the compiled code is wrong, not slow
MAX_REL_ERR = 1e-3  # max |tvm - onnxruntime| / max |onnxruntime|
# MetaSchedule's builder gives up on a candidate after this long (its default, 30 s, fails every candidate when
# the CPUs are busy; the result is then labelled tune-failed, never tuned)
BUILD_TIMEOUT_S = 120.0


class TvmSetupError(UserError, RuntimeError):
    """A device entry TVM cannot use; the message names the field and the fix."""


def tvm_cache_dir() -> Path:
    root = os.environ.get("HWNAS_CACHE") or Path.home() / ".cache" / "hwnas"
    return Path(root)


def make_target(device: Device, for_tuning: bool = False) -> Any:
    """The device's ``target`` (tag string or JSON dict) as a ``tvm.target.Target``.

    Tuning needs ``num-cores``: a dict target without it gets ``device.threads`` (or this machine's cores).
    """
    import tvm

    spec = device.target
    where = f"devices.yaml: device {device.name!r}.target"
    if isinstance(spec, dict):
        spec = dict(spec)
        if for_tuning and spec.get("kind") == "llvm" and "num-cores" not in spec:
            spec["num-cores"] = device.threads or os.cpu_count() or 1
    elif isinstance(spec, str):
        if " " in spec.strip():
            raise TvmSetupError(f"{where}: {spec!r} is a CLI target string, which TVM 0.27 no longer parses; write "
                                f"a mapping, e.g. target: {{kind: llvm, mcpu: cortex-a72, mtriple: aarch64-linux-gnu}}")
    else:
        raise TvmSetupError(f"{where}: {spec!r} is neither a tag string (raspberry-pi/4b-aarch64) nor a mapping")
    try:
        return tvm.target.Target(spec)
    except Exception as e:  # noqa: BLE001 - TVM raises ValueError/TVMError with long text
        raise TvmSetupError(f"{where}: TVM rejects {spec!r} ({' '.join(str(e).split())[:200]}); use a tag from "
                            f"tvm.target.list_tags() or a mapping with kind: llvm") from None


def target_triple(target: Any) -> str:
    """The target's triple (``mtriple``; the host's when unset)."""
    import tvm

    triple = target.attrs.get("mtriple") if target.attrs else None
    if triple:
        return str(triple)
    return str(tvm.get_global_func("target.llvm_get_system_triple")())


def arch_of(triple: str) -> str:
    arch = triple.split("-", 1)[0].lower()
    return {"arm64": "aarch64", "amd64": "x86_64", "i686": "x86", "i386": "x86"}.get(arch, arch)


def tvm_version() -> str:
    import tvm

    return str(tvm.__version__)


# -----------------------------------------------------------------------------------------------------------
# compile


@dataclass
class Compiled:
    executable: Any  # tvm VMExecutable
    variant: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Library:
    path: Path  # exported shared library on this host
    variant: str
    info: dict[str, Any]


def _has_kernels(mod: Any) -> bool:
    import tvm.tirx

    return any(isinstance(f, tvm.tirx.PrimFunc) for _, f in mod.functions.items())


def import_onnx(onnx_path: Path) -> Any:
    """ONNX -> Relax. Graphs the frontend rejects (e.g. a Pad whose pads are computed by Shape/Slice nodes, as
    torch exports FactorizedReduce) are constant-folded by onnxruntime's basic optimizer first, then retried."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    try:
        return from_onnx(onnx.load(str(onnx_path)))
    except Exception:  # noqa: BLE001 - retry on the folded graph; its error is the one reported
        with tempfile.TemporaryDirectory(prefix="hwprof-fold-") as d:
            return from_onnx(onnx.load(str(fold_onnx(onnx_path, Path(d) / "folded.onnx"))))


def fold_onnx(onnx_path: Path, out: Path) -> Path:
    """onnxruntime's basic (standard-ops-only) graph optimizations, mainly constant folding, written to ``out``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(out)
    so.log_severity_level = 3
    ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    return out


def copy_onnx(shape: tuple[int, ...], out: Path) -> Path:
    """A one-node ONNX graph ``y = x + 0`` of ``shape``: what a kernel-less graph (identity) is timed as."""
    import onnx
    from onnx import TensorProto, helper

    shape = tuple(int(d) for d in shape)
    graph = helper.make_graph([helper.make_node("Add", ["x", "zero"], ["y"])], "copy",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                              [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(out))
    return out


def onnx_input_shape(onnx_path: Path) -> tuple[int, ...]:
    import onnx

    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return tuple(int(d.dim_value) for d in dims)


def onnx_digest(onnx_path: Path) -> str:
    return hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()[:20]


def compile_onnx(onnx_path: Path, target: Any, *, tune_trials: int = 0, tuning_dir: Path | None = None,
                 tune_rpc: tuple[str, str, float] | None = None) -> Compiled:
    """Compile one ONNX graph for ``target``; with ``tune_trials`` > 0, MetaSchedule-tune it first (database in
    ``tuning_dir``; ``tune_rpc`` = (tracker, key, session_timeout_s) measures candidates on the board)."""
    import tvm
    from tvm import relax

    mod = import_onnx(onnx_path)
    pipeline = relax.get_default_pipeline(target)
    with target:
        lowered = pipeline(mod)
    if not _has_kernels(lowered):
        with tempfile.TemporaryDirectory(prefix="hwprof-copy-") as d:
            copy = copy_onnx(onnx_input_shape(onnx_path), Path(d) / "copy.onnx")
            with target:
                lowered = pipeline(import_onnx(copy))
        return Compiled(tvm.compile(lowered, target=target, relax_pipeline=None), "copy",
                        {"note": "graph has no kernel; timed as one elementwise copy of its input"})
    if tune_trials <= 0:
        return Compiled(tvm.compile(lowered, target=target, relax_pipeline=None), "untuned")
    assert tuning_dir is not None
    return _tune_and_compile(mod, target, tune_trials, tuning_dir, tune_rpc)


def tuning_variant(n_tasks: int, n_tuned: int) -> str:
    """``tuned`` only when every task has a valid record; anything less keeps untuned kernels: ``tune-failed``."""
    if n_tasks == 0:
        return "untuned"  # nothing MetaSchedule could tune
    return "tuned" if n_tuned == n_tasks else "tune-failed"


def _valid(record: Any) -> bool:
    secs = [float(s) for s in (record.run_secs or [])]
    return bool(secs) and all(math.isfinite(s) and 0 < s < 1e9 for s in secs)


def _ms_prepare(mod: Any, target: Any) -> Any:
    """The fusion passes ``meta_schedule.relax_integration.compile_relax`` applies before it reads the database."""
    import tvm
    from tvm import relax
    from tvm.relax import pipeline as rp

    try:
        dispatch = list(rp.library_dispatch_passes(target))
    except (ValueError, AttributeError):
        dispatch = []
    seq = tvm.transform.Sequential([*dispatch, relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                    relax.transform.FoldConstant(), relax.transform.FuseOps(),
                                    relax.transform.FuseTIR()])
    with target:
        return seq(mod)


def _tune_and_compile(mod: Any, target: Any, trials: int, work_dir: Path,
                      tune_rpc: tuple[str, str, float] | None) -> Compiled:
    from tvm.s_tir import meta_schedule as ms

    work_dir.mkdir(parents=True, exist_ok=True)
    fused = _ms_prepare(mod, target)  # tasks are fused TIR functions, as compile_relax looks them up
    tasks = ms.relax_integration.extract_tasks(fused, target)

    def tuned_tasks(db: Any) -> list[str]:
        done = []
        for t in tasks:
            rec = db.query_tuning_record(t.dispatched[0], target, t.task_name) if db.has_workload(
                t.dispatched[0]) else None
            if rec is not None and _valid(rec):
                done.append(t.task_name)
        return done

    db = ms.database.JSONDatabase(work_dir=str(work_dir))
    reused = len(tuned_tasks(db)) == len(tasks)
    build_errors = 0
    if not reused:
        runner: Any = "local"
        if tune_rpc is not None:
            tracker, key, session_timeout_s = tune_rpc
            host, port = tracker.rsplit(":", 1)
            runner = ms.runner.RPCRunner(ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port),
                                                             tracker_key=key,
                                                             session_timeout_sec=int(session_timeout_s)))
        db = ms.relax_integration.tune_relax(
            fused, params={}, target=target, work_dir=str(work_dir), max_trials_global=trials * max(1, len(tasks)),
            max_trials_per_task=trials, num_trials_per_iter=min(trials, 16), runner=runner, seed=0,
            builder=ms.builder.LocalBuilder(timeout_sec=BUILD_TIMEOUT_S))
        records = db.get_all_tuning_records()
        build_errors = sum(not _valid(r) for r in records)
    done = tuned_tasks(db)
    info = {"tasks": len(tasks), "tuned_tasks": len(done), "trials_per_task": trials, "tuning_db": str(work_dir),
            "reused_db": reused, "invalid_records": build_errors}
    ex = ms.relax_integration.compile_relax(db, mod, target, params=None)
    variant = tuning_variant(len(tasks), len(done))
    if variant == "tune-failed":
        info["note"] = (f"only {len(done)} of {len(tasks)} tasks have a valid tuning record (builder or runner "
                        f"failed on every candidate, e.g. busy CPUs): untuned kernels remain")
    return Compiled(ex, variant, info)


def export_lib(executable: Any, path: Path, cross_compiler: str = "") -> Path:
    """Write the shared library; ``cross_compiler`` (e.g. aarch64-linux-gnu-g++) links for another arch."""
    if cross_compiler:
        if shutil.which(cross_compiler) is None:
            raise TvmSetupError(f"cross compiler {cross_compiler!r} not found on PATH; install it (Debian: "
                                f"apt-get install g++-aarch64-linux-gnu) or fix cross_compiler in devices.yaml")
        from tvm.support import cc

        executable.export_library(str(path), fcompile=cc.cross_compiler(cross_compiler))
    else:
        executable.export_library(str(path))
    return path


def evaluator_plan(protocol: Protocol, one_call_ms: float) -> tuple[int, int]:
    """``(number, repeat)`` of ``time_evaluator`` for the protocol, given a warm one-call time."""
    number = protocol.calls_for(one_call_ms)
    sample_ms = max(number * max(one_call_ms, 1e-6), 1e-6)
    repeat = max(protocol.min_samples, math.ceil(protocol.min_seconds * 1000.0 / sample_ms))
    cap = max(2, math.floor(protocol.max_seconds * 1000.0 / sample_ms))
    return number, max(2, min(repeat, cap))


@dataclass
class EvaluatorRun:
    """What :func:`_run_evaluator` measured: ``samples`` (ms) and ``output`` are None when the plan would have run
    past the protocol's ``key_timeout_s`` (nothing was timed then)."""

    one_call_ms: float
    number: int
    repeat: int
    planned_s: float
    samples: tuple[float, ...] | None = None
    output: np.ndarray | None = None


def _run_evaluator(vm: Any, dev: Any, protocol: Protocol) -> EvaluatorRun:
    """Warm up (one call's time), plan ``(number, repeat)`` from the protocol, then time the samples."""
    warm = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=1,
                             min_repeat_ms=max(1, int(protocol.warmup_s * 1000)))("main")
    one_call_ms = float(warm.mean) * 1000.0
    number, repeat = evaluator_plan(protocol, one_call_ms)
    # time_evaluator cannot be interrupted: a key whose planned samples would run past the protocol's per-key limit
    # is an error row before it starts (the plan itself is capped by max_seconds)
    run = EvaluatorRun(one_call_ms, number, repeat, protocol.warmup_s + number * repeat * one_call_ms / 1000.0)
    if run.planned_s > protocol.key_timeout_s:
        return run
    res = vm.time_evaluator("invoke_stateful", dev, number=number, repeat=repeat, min_repeat_ms=0)("main")
    out = vm.get_outputs("main")
    run.output = out.numpy() if hasattr(out, "numpy") else out[0].numpy()
    run.samples = tuple(float(v) * 1000.0 for v in res.results)
    return run


# -----------------------------------------------------------------------------------------------------------
# sessions


def remote_info(sess: Any) -> dict[str, Any]:
    """What the remote side tells about itself (functions a runtime-only board lacks are left out)."""
    out: dict[str, Any] = {}
    for name, fn in (("triple", "target.llvm_get_system_triple"), ("cpu", "target.llvm_get_system_cpu"),
                     ("llvm_major", "target.llvm_version_major"), ("threads", "runtime.NumThreads")):
        try:
            value = sess.get_function(fn)()
        except Exception:  # noqa: BLE001 - not registered on this runtime
            continue
        out[name] = value if isinstance(value, (int, float)) else str(value)
    if "triple" in out:
        out["arch"] = arch_of(out["triple"])
    return out


class SessionLost(RuntimeError):
    pass


class TvmRunner(SequentialRunner):
    """The TVM runner of one device; see the module docstring."""

    name = "tvm"

    def __init__(self, device: Device, tune_trials: int | None = None, server_log_dir: str | None = None):
        if device.runtime != "tvm":
            raise TvmSetupError(f"device {device.name!r} has runtime {device.runtime!r}, not tvm")
        self.device = device
        self.tune_trials = device.tune_trials if tune_trials is None else int(tune_trials)
        self.target = make_target(device, for_tuning=self.tune_trials > 0)
        self.server_log_dir = server_log_dir
        self._server: RpcProcess | None = None
        self._sess: Any = None
        self._remote: dict[str, Any] = {}
        self._down: str | None = None  # set when a session could not be (re)opened: later keys fail fast
        self._opened = False  # a session was open once: a later failure "lost" it
        self._board = ""  # host:port of the rpc_server the tracker gave this runner (rows record it)
        self._tmp = Path(tempfile.mkdtemp(prefix="hwprof-tvm-"))
        self._libs: dict[str, Library] = {}

    # -- sessions -----------------------------------------------------------------------------------------
    @property
    def threads(self) -> int:
        return self.device.threads or os.cpu_count() or 1

    def _open(self) -> Any:
        dev = self.device
        if dev.rpc is not None:
            sess, self._board = request_board(dev.rpc.tracker, dev.rpc.key, dev.rpc.request_timeout_s,
                                              dev.rpc.session_timeout_s, threads=dev.threads)
            return sess
        if self._server is None or not self._server.alive():
            if self._server is not None:
                self._server.stop()
            # a random key per server: TVM RPC runs any library it is sent, so only this process may connect
            self._local_key = f"{LOCAL_KEY}-{secrets.token_hex(16)}"
            self._server = start_server(self._local_key, None, "127.0.0.1", threads=self.threads,
                                        die_with_parent=True,
                                        log_dir=Path(self.server_log_dir) if self.server_log_dir else None)
        return connect_session(self._server.host, self._server.port, self._local_key)

    def session(self) -> Any:
        if self._down is not None:
            raise SessionLost(self._down)
        if self._sess is None:
            try:
                self._sess = self._open()
            except RpcError as e:
                what = "rpc session lost" if self._opened else "no rpc session"
                self._down = f"{what}: {e}; rerun the same command to measure what is missing"
                raise SessionLost(self._down) from None
            self._opened = True
            self._remote = remote_info(self._sess)
        return self._sess

    def _drop_session(self) -> None:
        self._sess = None
        if self._server is not None:  # local: a crashed session can leave rpc_server hung; start a fresh one
            self._server.stop()
            self._server = None

    # -- Runner protocol ----------------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        dev = self.device
        fp: dict[str, Any] = {**host_fingerprint(), "versions": library_versions(), "runtime": "tvm",
                              "tvm_version": tvm_version(), "target": str(self.target),
                              "target_triple": target_triple(self.target), "threads": self.threads,
                              "tune_trials": self.tune_trials, "cross_compiler": dev.cross_compiler}
        if dev.rpc is not None:
            fp["rpc"] = {"tracker": dev.rpc.tracker, "key": dev.rpc.key}
        try:
            self.session()
            fp["remote"] = dict(self._remote)
        except SessionLost as e:
            fp["remote"] = {"error": str(e)}
        return fp

    def measure(self, request: MeasureRequest, protocol: Protocol) -> MeasureResult:
        variant = ""
        try:
            if self._down is not None:
                raise SessionLost(self._down)
            lib = self._library(request)
            variant = lib.variant
            samples, number, info = self._time(request, lib, protocol)
            board = {"board": self._board} if self._board else {}
            return MeasureResult(request.key, samples, number, variant=variant, info={**lib.info, **info, **board})
        except SessionLost as e:
            text = str(e)
            return MeasureResult.failed(request.key, text if text.startswith(("rpc session lost", "no rpc session"))
                                        else f"rpc session lost: {text}", variant)
        except Exception as e:  # noqa: BLE001 - a failure is a value
            return MeasureResult.failed(request.key, e, variant)

    def close(self) -> None:
        self._sess = None
        if self._server is not None:
            self._server.stop()
            self._server = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    # -- steps --------------------------------------------------------------------------------------------
    def _compile(self, request: MeasureRequest) -> Compiled:
        digest = onnx_digest(request.onnx_path)
        tuning_dir = tvm_cache_dir() / "tvm-tuning" / self.device.name / digest
        tune_rpc = None
        if self.device.rpc is not None:
            tune_rpc = (self.device.rpc.tracker, self.device.rpc.key, self.device.rpc.session_timeout_s)
        return compile_onnx(request.onnx_path, self.target, tune_trials=self.tune_trials, tuning_dir=tuning_dir,
                            tune_rpc=tune_rpc)

    def _library(self, request: MeasureRequest) -> Library:
        """The exported library of ``request`` (compiled once per runner: CV re-measures re-use it)."""
        digest = onnx_digest(request.onnx_path)
        if digest not in self._libs:
            compiled = self._compile(request)
            path = self._tmp / f"{digest}-{compiled.variant}.so"
            export_lib(compiled.executable, path, self.device.cross_compiler)
            self._libs[digest] = Library(path, compiled.variant, compiled.info)
        return self._libs[digest]

    def _time(self, request: MeasureRequest, lib: Library,
              protocol: Protocol) -> tuple[tuple[float, ...], int, dict[str, Any]]:
        """Run the built library over the session in named steps, as TVM's RPCRunner does: upload and load it,
        allocate the input, run the evaluator (warm-up, plan, samples), clean up; then check the output against
        onnxruntime. A broken session is a :class:`SessionLost`, a plan past ``key_timeout_s`` a ``KeyTimeout``."""
        x = np.random.default_rng(0).standard_normal(request.input_shape).astype(np.float32)
        sess = self.session()
        try:
            vm, dev = self._load(sess, lib, x)
            run = _run_evaluator(vm, dev, protocol)
            del vm
            try:
                sess.remove(lib.path.name)
            except Exception:  # noqa: BLE001 - a leftover file in the session's temp dir is harmless
                pass
        except Exception as e:  # noqa: BLE001 - decide whether the session is gone
            if self._session_broken(e):
                self._drop_session()
                raise SessionLost(" ".join(str(e).split())[:300]) from None
            raise
        if run.samples is None:
            raise KeyTimeout(f"timed out: {run.repeat} samples of {run.number} call(s) at {run.one_call_ms:.4g} ms "
                             f"would take {run.planned_s:.3g} s > {protocol.key_timeout_s:g} s (protocol "
                             f"key_timeout_s)")
        err, rel = _err_vs_ort(request.onnx_path, x, run.output) if lib.variant != "copy" else (0.0, 0.0)
        if not rel <= MAX_REL_ERR:
            raise RuntimeError(f"TVM output differs from onnxruntime by {rel:.3g} relative to its largest value "
                               f"(> {MAX_REL_ERR}): miscompiled")
        return run.samples, run.number, {"max_abs_err_vs_onnxruntime": err, "one_call_ms": run.one_call_ms,
                                         "number": run.number, "repeat": run.repeat}

    @staticmethod
    def _load(sess: Any, lib: Library, x: np.ndarray) -> tuple[Any, Any]:
        """Upload the library, load it into a Relax VM on the session's CPU and set its input: (vm, device)."""
        import tvm
        from tvm import relax

        sess.upload(str(lib.path), lib.path.name)
        rlib = sess.load_module(lib.path.name)
        dev = sess.cpu()
        vm = relax.VirtualMachine(rlib, dev)
        vm.set_input("main", tvm.runtime.tensor(x, dev))
        return vm, dev

    def _session_broken(self, e: Exception) -> bool:
        text = str(e)
        markers = ("kShutdown", "Connection reset", "Broken pipe", "connection closed", "RPCSessionTimeoutError",
                   "Socket", "socket", "EOF", "kReturn")
        if any(m in text for m in markers):
            return True
        if self.device.rpc is None and self._server is not None and not self._server.alive():
            return True
        return False


def _err_vs_ort(onnx_path: Path, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(max |tvm - ort|, the same over max |ort|): the check is relative, an output can be ~1e-7."""
    import onnxruntime as ort

    from profiler.measuring.export import relative_error

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    if ref.shape != y.shape:
        return float("inf"), float("inf")
    err = float(np.max(np.abs(ref.astype(np.float64) - y.astype(np.float64)))) if ref.size else 0.0
    return err, relative_error(y, ref)


def variant_mix(table: Path, tune_trials: int) -> str | None:
    """Why resuming ``table`` with ``tune_trials`` would mix tuned and untuned entries (None when it would not)."""
    from profiler.latency.tables import TableError, load_table

    if not Path(table).exists():
        return None
    try:
        rows = load_table(table).rows.values()
    except TableError:
        return None  # the sweep reports the table problem itself
    kinds = {"untuned": "untuned", "tuned": "tuned", "tune-failed": "tuned"}
    have = {kinds[r["variant"]] for r in rows if r["status"] != "error" and r["variant"] in kinds}
    want = "tuned" if tune_trials > 0 else "untuned"
    other = have - {want}
    if not other:
        return None
    return (f"{table}: holds {other.pop()} TVM entries, and this run measures {want} ones; mixing them in one table "
            f"would be silent: use --fresh, another --out, or {'no ' if want == 'tuned' else ''}--tune-trials")


def make_tvm_runner(device: Device, tune_trials: int | None = None, isolate: bool = True) -> Any:
    """The runner for a TVM device: in a child process (``isolate``) so that a crash becomes an error row."""
    if not isolate:
        return TvmRunner(device, tune_trials)
    from profiler.measuring.runners.isolate import IsolatedRunner

    make_target(device, for_tuning=(tune_trials or device.tune_trials) > 0)  # bad target: fail here, one line
    timeout_s = 600.0 + (device.rpc.session_timeout_s if device.rpc else 0.0)
    trials = device.tune_trials if tune_trials is None else tune_trials
    timeout_s += 30.0 * trials
    return IsolatedRunner("profiler.measuring.runners.tvm_runner:TvmRunner", device, trials, name="tvm", timeout_s=timeout_s)

"""Measure in a child process, so that a crash in native code (a segfault in a runtime, an abort in a compiler)
becomes an error row instead of taking hwprof down.

:class:`IsolatedRunner` wraps any runner: it starts a child with the ``spawn`` method (no forked copies of
threads, CUDA or TVM state), builds the runner there from an importable factory (``"package.module:callable"``)
and forwards each request. The child stays up for many keys; when it dies or stops answering, the key in flight
gets an error result naming the signal, a fresh child is started for the next key, and the sweep goes on.

Messages between the processes are JSON (``send_bytes``), never pickled data from the runner.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import multiprocessing as mp
import os
import signal
import sys
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from profiler.errors import SetupError
from profiler.measuring.protocol import Protocol
from profiler.measuring.runners.base import MeasureRequest, MeasureResult, SequentialRunner


def _load_factory(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"runner factory {spec!r} is not 'package.module:callable'")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _request_to_json(req: MeasureRequest) -> dict[str, Any]:
    return {"key": req.key, "onnx_path": str(req.onnx_path), "input_shape": list(req.input_shape)}


def _result_to_json(res: MeasureResult) -> dict[str, Any]:
    return {"key": res.key, "samples_ms": list(res.samples_ms), "calls_per_sample": res.calls_per_sample,
            "error": res.error, "variant": res.variant, "info": res.info}


def _result_from_json(d: dict[str, Any]) -> MeasureResult:
    return MeasureResult(d["key"], tuple(float(s) for s in d["samples_ms"]), int(d["calls_per_sample"]), d["error"],
                         d["variant"], dict(d["info"]))


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this process when its parent dies, even by SIGKILL (a daemon child only dies at a clean exit)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        os._exit(0)


def _child_main(conn: Any, factory: str, args: tuple[Any, ...], kwargs: dict[str, Any], parent_pid: int) -> None:
    """Child loop: build the runner, then answer ``fingerprint`` / ``measure`` / ``close`` messages."""
    _die_with_parent(parent_pid)
    try:
        runner = _load_factory(factory)(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - reported to the parent as a value
        conn.send_bytes(json.dumps({"ready": False, "error": f"{type(e).__name__}: {e}"}).encode())
        return
    conn.send_bytes(json.dumps({"ready": True}).encode())
    try:
        while True:
            try:
                msg = json.loads(conn.recv_bytes())
            except EOFError:
                return
            op = msg["op"]
            if op == "close":
                return
            try:
                if op == "fingerprint":
                    reply: Any = runner.fingerprint()
                elif op == "measure":
                    req = msg["request"]
                    reply = _result_to_json(runner.measure(
                        MeasureRequest(req["key"], Path(req["onnx_path"]), tuple(req["input_shape"])),
                        Protocol(**msg["protocol"])))
                else:
                    raise ValueError(f"unknown message {op!r}")
                conn.send_bytes(json.dumps({"ok": True, "value": reply}, default=str).encode())
            except Exception as e:  # noqa: BLE001
                conn.send_bytes(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}",
                                            "trace": traceback.format_exc(limit=5)}).encode())
    finally:
        close = getattr(runner, "close", None)
        if close:
            close()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class RunnerCrashed(RuntimeError):
    pass


class IsolatedRunner(SequentialRunner):
    """A runner whose ``measure`` runs in a spawned child process built by ``factory(*args, **kwargs)``.

    ``timeout_s`` bounds one request (compile + measure); ``start_timeout_s`` bounds building the runner in the
    child. The fingerprint is the child's, with ``"isolated": true`` added.
    """

    def __init__(self, factory: str, *args: Any, name: str = "", timeout_s: float = 900.0,
                 start_timeout_s: float = 300.0, **kwargs: Any):
        self.factory = factory
        self.args = args
        self.kwargs = kwargs
        self.name = name or factory.rpartition(":")[2]
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: Any = None
        self.crashes = 0

    # -- child lifecycle -------------------------------------------------------------------------------------
    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_child_main, args=(child, self.factory, self.args, self.kwargs, os.getpid()),
                                 name=f"hwprof-{self.name}", daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        hello = self._recv(self.start_timeout_s, "starting")
        if not hello.get("ready"):
            self._stop()
            raise SetupError(f"runner {self.name} could not start in its child process: {hello.get('error')}")

    def _stop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.send_bytes(json.dumps({"op": "close"}).encode())
            except (OSError, ValueError):
                pass
        if self._proc is not None:
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout=10)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def _recv(self, timeout_s: float, doing: str) -> dict[str, Any]:
        try:
            ready = self._conn.poll(timeout_s)
            if ready:
                return json.loads(self._conn.recv_bytes())
        except (EOFError, OSError):
            pass
        self._proc.join(timeout=2)
        code = self._proc.exitcode
        if code is None:  # hung: kill it
            self._proc.kill()
            self._proc.join(timeout=10)
            why = f"stopped answering for {timeout_s:g} s and was killed"
        else:
            why = _describe_exit(code)
        self._conn.close()
        self._proc = self._conn = None
        self.crashes += 1
        raise RunnerCrashed(f"the {self.name} runner process {why} while {doing}")

    def _call(self, msg: dict[str, Any], timeout_s: float, doing: str) -> Any:
        if self._proc is None:
            self._start()
        try:
            self._conn.send_bytes(json.dumps(msg).encode())
        except (OSError, ValueError):
            pass  # the child is gone; _recv says how
        reply = self._recv(timeout_s, doing)
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error", "unknown error in the runner process"))
        return reply["value"]

    # -- Runner protocol -------------------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        try:
            fp = self._call({"op": "fingerprint"}, self.start_timeout_s, "reading its fingerprint")
        except (RunnerCrashed, RuntimeError) as e:
            return {"runtime": self.name, "isolated": True, "fingerprint_error": str(e)}
        return {**fp, "isolated": True}

    def measure(self, request: MeasureRequest, protocol: Protocol) -> MeasureResult:
        try:
            value = self._call({"op": "measure", "request": _request_to_json(request), "protocol": asdict(protocol)},
                               self.timeout_s, f"measuring {request.key}")
        except RunnerCrashed as e:
            return MeasureResult.failed(request.key, f"{e}; a fresh process measures the next key")
        except Exception as e:  # noqa: BLE001 - start failure or an error the child reported
            return MeasureResult.failed(request.key, e)
        return _result_from_json(value)

    def close(self) -> None:
        self._stop()

"""hwprof's timing script for a remote board (copied there by the SSH runner with ``timing.py`` beside it).

Needs only python3 (3.7+), numpy and onnxruntime on the board. Usage::

    python3 board_timer.py --serve      print the board description, then run one job per line read from stdin
                                        (what hwprof runs: one process, imports once, for the whole sweep;
                                        it first removes hwprof-* folders that killed runs left, see sweep_stale)
    python3 board_timer.py JOB.json     print the board description, then time the models the job lists
    python3 board_timer.py --info       print the board description only

The job (JSON)::

    {"version": 1, "threads": 4, "graph_optimization": "all",
     "protocol": {"warmup_s": ..., "min_samples": ..., ...},
     "models": [{"key": "...", "file": "m0000.onnx", "input_shape": [1, 8, 32, 32]}, ...]}

Output: one JSON object per line, flushed as soon as it is known, so a dropped connection loses only the model in
flight: first ``{"info": {...}}``, then for each job, per model ``{"key": ..., "samples_ms": [...],
"calls_per_sample": n}`` or ``{"key": ..., "error": "..."}`` (one failing model is an entry, never the end of the
job), then ``{"done": N}``.
"""

import json
import os
import platform
import re
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # leave nothing but our own files in the directory hwprof removes afterwards

from timing import time_calls  # noqa: E402  (shipped beside this file: the same loop as on the host)

OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}
PROTOCOL_FIELDS = ("warmup_s", "min_samples", "min_seconds", "max_seconds", "calls_per_sample", "target_sample_ms")


def emit(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def board_info():
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name = line.split(":", 1)[0].strip()
                if name in ("model name", "Model", "Hardware") and ":" in line:
                    cpu = line.split(":", 1)[1].strip()
                    if name == "model name":
                        break
    except OSError:
        pass
    governor = None
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") as f:
            governor = f.read().strip()
    except OSError:
        pass
    versions = {}
    for mod in ("onnxruntime", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception as e:  # reported, the job then fails per model with the import error
            versions[mod] = "missing: %s: %s" % (type(e).__name__, e)
    return {"hostname": platform.node(), "cpu_model": cpu, "cores": os.cpu_count(), "governor": governor,
            "os": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "versions": versions}


def time_model(ort, np, model, opts, providers, protocol):
    sess = ort.InferenceSession(os.path.join(HERE, model["file"]), opts, providers=providers)
    x = np.random.default_rng(0).standard_normal(tuple(model["input_shape"])).astype(np.float32)
    feed = {sess.get_inputs()[0].name: x}

    def call():
        sess.run(None, feed)

    # the host's per-key limit (older hosts send none: unbounded as before)
    samples, calls = time_calls(call, *(protocol[k] for k in PROTOCOL_FIELDS), limit_s=protocol.get("key_timeout_s"))
    return {"key": model["key"], "samples_ms": samples, "calls_per_sample": calls}


def load_runtime():
    """(onnxruntime, numpy), or the error message that says how to install them."""
    try:
        import numpy as np
        import onnxruntime as ort
    except Exception as e:
        return None, ("%s: %s; install them on the board for this python (%s): pip install onnxruntime numpy"
                      % (type(e).__name__, e, sys.executable))
    return (ort, np), None


def run_job(job, runtime, why):
    """Time each model of ``job``; one line per model, then ``{"done": N}``."""
    models = job.get("models", [])
    if runtime is None:
        for model in models:
            emit({"key": model.get("key", "?"), "error": why})
        emit({"done": len(models)})
        return
    ort, np = runtime
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(job.get("threads", 0))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                            OPT_LEVELS[job.get("graph_optimization", "all")])
    opts.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    protocol = job["protocol"]
    for model in models:
        try:
            emit(time_model(ort, np, model, opts, providers, protocol))
        except Exception as e:  # a failure is a value: one bad model never ends the job
            emit({"key": model.get("key", "?"), "error": "%s: %s" % (type(e).__name__, e)})
    emit({"done": len(models)})


OWNER_FILE = "owner.pid"
OWNER_TAG = "hwprof-board"  # owner.pid holds "hwprof-board PID" (PID 0: the host made the folder, no run yet)
RUN_DIR = re.compile(r"hwprof-[0-9a-f]{12}")  # exactly the folders the ssh runner creates
STALE_AFTER_S = 3600.0


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: a process of another user holds that pid
        return True
    return True


def _last_touched(d):
    t = os.stat(d).st_mtime
    for name in os.listdir(d):
        try:
            t = max(t, os.stat(os.path.join(d, name)).st_mtime)
        except OSError:
            pass
    return t


def _owner(d):
    """The pid in a folder's owner file written by hwprof (0: made by the host, no run yet); None when the folder
    has no such file (then it is not ours and is never removed)."""
    try:
        with open(os.path.join(d, OWNER_FILE)) as f:
            m = re.match(r"%s (\d+)\n?$" % OWNER_TAG, f.read(64))
    except (OSError, UnicodeDecodeError):
        return None
    return int(m.group(1)) if m else None


def sweep_stale(here=HERE, now=None, stale_after_s=STALE_AFTER_S):
    """Claim this run's folder (its pid in ``owner.pid``) and remove sibling folders that earlier runs left behind
    (the host was killed before it could clean up). A folder goes only when it is one hwprof made (its name is
    exactly ``hwprof-`` + 12 hex digits AND it holds an ``owner.pid`` that hwprof wrote), no live process owns it,
    and nothing in it changed for ``stale_after_s``. Returns the names removed."""
    with open(os.path.join(here, OWNER_FILE), "w") as f:
        f.write("%s %d\n" % (OWNER_TAG, os.getpid()))
    now = time.time() if now is None else now
    parent, mine = os.path.split(os.path.abspath(here))
    removed = []
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return removed
    for name in names:
        d = os.path.join(parent, name)
        if name == mine or not RUN_DIR.fullmatch(name) or os.path.islink(d) or not os.path.isdir(d):
            continue
        pid = _owner(d)
        if pid is None or (pid > 0 and _alive(pid)):
            continue  # not a folder hwprof made, or its run is alive
        try:
            if now - _last_touched(d) < stale_after_s:
                continue
        except OSError:
            continue
        shutil.rmtree(d, ignore_errors=True)
        if not os.path.exists(d):
            removed.append(name)
    return removed


def check_job(job):
    if not isinstance(job, dict) or job.get("version") != 1:
        return "job version %r is not supported (this script reads 1)" % (
            job.get("version") if isinstance(job, dict) else job)
    return None


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: board_timer.py --serve | JOB.json | --info\n")
        return 2
    emit({"info": board_info()})
    if argv[1] == "--info":
        return 0
    runtime, why = load_runtime()
    if argv[1] == "--serve":
        sweep_stale()
        jobs = (json.loads(line) for line in sys.stdin if line.strip())
    else:
        with open(argv[1]) as f:
            jobs = iter([json.load(f)])
    for job in jobs:
        bad = check_job(job)
        if bad:
            sys.stderr.write("board_timer.py: %s\n" % bad)
            return 2
        run_job(job, runtime, why)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""devices.yaml -> frozen dataclasses, validated on load.

Every error is one line naming the file, the device and the field, with the fix. File lookup order: an explicit
path (``--devices``), ``$HWNAS_DEVICES``, ``./devices.yaml``, the ``devices.yaml`` at the project root.
"""

from __future__ import annotations

import math
import os
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from profiler.errors import InputError, UserError
from profiler.fileio import loads_yaml, read_text
from profiler.measuring.protocol import Protocol

RUNTIMES = ("onnxruntime", "torch", "tvm", "onnxruntime-ssh")
PROJECT_DEVICES = Path(__file__).resolve().parents[2] / "devices.yaml"


class DeviceError(UserError, ValueError):
    """A devices.yaml problem; the message is the one line shown to the user."""


@dataclass(frozen=True)
class RpcConfig:
    tracker: str  # host:port of the TVM RPC tracker
    key: str  # device key the rpc_server registered with
    session_timeout_s: float = 600.0  # one session's lifetime on the board
    request_timeout_s: float = 30.0  # give up when no server with this key answers within this time
    boards: int = 1  # boards measured in parallel under this key (a farm); 0 = every server the tracker lists


@dataclass(frozen=True)
class SshConfig:
    host: str
    user: str
    key_file: str
    known_hosts: str = "~/.ssh/known_hosts"
    port: int = 22
    python: str = "python3"
    workdir: str = "/tmp"
    connect_timeout_s: float = 15.0
    command_timeout_s: float = 900.0


@dataclass(frozen=True)
class Device:
    name: str
    runtime: str
    description: str = ""
    provider: str = "cpu"  # onnxruntime: cpu | cuda
    threads: int = 0  # intra-op threads; 0 = all cores
    graph_optimization: str = "all"  # onnxruntime: disable | basic | extended | all
    torch_device: str = "cpu"  # torch: cpu | cuda
    target: Any = None  # tvm: a target tag string or a JSON target dict
    cross_compiler: str = ""  # tvm: e.g. aarch64-linux-gnu-g++ for ARM boards
    tune_trials: int = 0  # tvm: MetaSchedule trials per key (0 = untuned)
    rpc: RpcConfig | None = None
    ssh: SshConfig | None = None
    protocol: Protocol = field(default_factory=Protocol)
    pool: tuple["Device", ...] = ()  # a farm: the member devices (one class) that a sweep measures on at once

    @property
    def is_remote(self) -> bool:
        return self.rpc is not None or self.ssh is not None


_CHOICES = {
    "provider": ("cpu", "cuda"),
    "graph_optimization": ("disable", "basic", "extended", "all"),
    "torch_device": ("cpu", "cuda"),
}
_REQUIRED_BY_RUNTIME = {"tvm": ("target",), "onnxruntime-ssh": ("ssh",)}


def _check_type(where: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _check_type(where, value, args[0])
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DeviceError(f"{where}: {value!r} is not a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise DeviceError(f"{where}: {value!r} is not an integer")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise DeviceError(f"{where}: {value!r} is not a string (quote it)")
        return value
    return value


def _build(cls: type, data: Any, where: str, extra: dict[str, Any] | None = None) -> Any:
    if not isinstance(data, dict):
        raise DeviceError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = dict(extra or {})
    for k, v in data.items():
        if k not in known or k in kwargs:
            raise DeviceError(f"{where}: unknown field {k!r}; allowed: {', '.join(n for n in known if n not in kwargs)}")
        tp = hints[k]
        if k == "rpc":
            kwargs[k] = _build(RpcConfig, v, f"{where}.rpc")
        elif k == "ssh":
            kwargs[k] = _build(SshConfig, v, f"{where}.ssh")
        elif k == "protocol":
            try:
                kwargs[k] = Protocol.from_dict(v if isinstance(v, dict) else {"?": v}, f"{where}.protocol")
            except ValueError as e:
                raise DeviceError(str(e)) from None
        else:
            kwargs[k] = _check_type(f"{where}.{k}", v, tp)
            if k in _CHOICES and v not in _CHOICES[k]:
                raise DeviceError(f"{where}.{k}: {v!r} is not one of {', '.join(_CHOICES[k])}")
    for name, f in known.items():
        if name not in kwargs and f.default is MISSING and f.default_factory is MISSING:  # type: ignore[misc]
            raise DeviceError(f"{where}: missing field {name!r}")
    return cls(**kwargs)


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_device_name(name: str, where: str = "device") -> str:
    """A device name goes into file paths (tables/DEVICE/...): letters, digits, '.', '_' and '-' only."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise DeviceError(f"{where}: name {name!r} is not path-safe; use letters, digits, '.', '_' and '-' "
                          f"(start with a letter or digit, at most 64 characters)")
    return name


def _check_ranges(dev: Device, where: str) -> None:
    """Counts >= 0 and timeouts finite and > 0 (a negative thread count or an infinite timeout is a typo)."""
    for f in ("threads", "tune_trials"):
        if getattr(dev, f) < 0:
            zero = "all cores" if f == "threads" else "untuned"
            raise DeviceError(f"{where}.{f}: {getattr(dev, f)!r} must be >= 0 (0 = {zero})")
    subs = [("rpc", dev.rpc, ("session_timeout_s", "request_timeout_s")),
            ("ssh", dev.ssh, ("connect_timeout_s", "command_timeout_s"))]
    for sub, cfg, timeouts in subs:
        for t in timeouts if cfg is not None else ():
            v = getattr(cfg, t)
            if not (math.isfinite(v) and v > 0):
                raise DeviceError(f"{where}.{sub}.{t}: {v!r} must be a finite number of seconds > 0")
    if dev.rpc is not None and dev.rpc.boards < 0:
        raise DeviceError(f"{where}.rpc.boards: {dev.rpc.boards!r} must be >= 0 (1 = one board, N = a farm of N "
                          f"boards under the key, 0 = every rpc_server the tracker lists for it)")
    if dev.ssh is not None and not 0 < dev.ssh.port < 65536:
        raise DeviceError(f"{where}.ssh.port: {dev.ssh.port!r} is not a TCP port (1-65535)")


# what makes devices "of one class": a pool's members must agree on these (one table, one protocol)
POOL_CLASS = ("runtime", "provider", "threads", "graph_optimization", "torch_device", "target", "cross_compiler",
              "tune_trials", "protocol")


def _parse_pool(name: str, entry: dict[str, Any], parsed: dict[str, Device], where: str) -> Device:
    """``{pool: [a, b], description: ...}``: the first member's entry under the pool's name, ``pool`` = members."""
    unknown = set(entry) - {"pool", "description"}
    if unknown:
        raise DeviceError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} beside pool; a pool takes only "
                          f"pool and description (its members' entries say how to reach them)")
    members = entry["pool"]
    if not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, str) for m in members):
        raise DeviceError(f"{where}.pool: {members!r} is not a list of two or more device names")
    if len(set(members)) != len(members):
        raise DeviceError(f"{where}.pool: {members!r} names a device twice; each board once")
    for m in members:
        if m not in parsed:
            raise DeviceError(f"{where}.pool: no device {m!r} (a member is a device entry of this file, not a pool)")
    first = parsed[members[0]]
    for m in members[1:]:
        diff = [f for f in POOL_CLASS if getattr(parsed[m], f) != getattr(first, f)]
        if diff:
            raise DeviceError(f"{where}.pool: {m!r} differs from {members[0]!r} in {', '.join(diff)}; a pool's "
                              f"boards are of one class (give them the same {diff[0]})")
    desc = entry.get("description", f"pool of {', '.join(members)}")
    return replace(first, name=name, description=str(desc), pool=tuple(parsed[m] for m in members))


def parse_devices(data: Any, source: str) -> dict[str, Device]:
    if not isinstance(data, dict) or "devices" not in data:
        raise DeviceError(f"{source}: expected a top-level 'devices:' mapping")
    unknown = set(data) - {"devices", "schema"}
    if unknown:
        raise DeviceError(f"{source}: unknown top-level field(s) {', '.join(sorted(unknown))}; allowed: schema, devices")
    if data.get("schema", 1) != 1:
        raise DeviceError(f"{source}: schema {data['schema']!r} is not supported (this hwprof reads schema 1)")
    devs = data["devices"]
    if not isinstance(devs, dict) or not devs:
        raise DeviceError(f"{source}: 'devices' must be a non-empty mapping of name -> entry")
    out: dict[str, Device] = {}
    pools: dict[str, Any] = {}
    for name, entry in devs.items():
        where = f"{source}: device {name!r}"
        check_device_name(str(name), where)
        if isinstance(entry, dict) and "pool" in entry:
            pools[str(name)] = entry
            continue
        if not isinstance(entry, dict) or "runtime" not in entry:
            raise DeviceError(f"{where}: missing field 'runtime' (one of {', '.join(RUNTIMES)})")
        if entry["runtime"] not in RUNTIMES:
            raise DeviceError(f"{where}.runtime: unknown runtime {entry['runtime']!r}; use one of {', '.join(RUNTIMES)}")
        dev = _build(Device, entry, where, extra={"name": str(name)})
        for req in _REQUIRED_BY_RUNTIME.get(dev.runtime, ()):
            if getattr(dev, req) in (None, ""):
                raise DeviceError(f"{where}: runtime {dev.runtime} needs field {req!r}")
        _check_ranges(dev, where)
        out[str(name)] = dev
    members = dict(out)
    for name, entry in pools.items():
        out[name] = _parse_pool(name, entry, members, f"{source}: device {name!r}")
    return out


def devices_path(path: str | Path | None = None) -> Path:
    if path:
        return Path(path)
    env = os.environ.get("HWNAS_DEVICES")
    if env:
        return Path(env)
    if Path("devices.yaml").is_file():
        return Path("devices.yaml")
    return PROJECT_DEVICES


def load_devices(path: str | Path | None = None) -> dict[str, Device]:
    p = devices_path(path)
    try:
        text = read_text(p, "devices file")
    except OSError as e:
        raise DeviceError(f"{p}: cannot read devices file ({e.strerror}); pass --devices PATH or set HWNAS_DEVICES")
    try:
        data = loads_yaml(text, str(p))
    except InputError as e:
        raise DeviceError(str(e)) from None
    return parse_devices(data, str(p))


def get_device(name: str, path: str | Path | None = None) -> Device:
    devs = load_devices(path)
    if name not in devs:
        raise DeviceError(f"{devices_path(path)}: no device {name!r}; devices: {', '.join(devs)}")
    return devs[name]

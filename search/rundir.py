"""Run directories: the one place that knows their layout.

A search run directory (``hwnas search --out``), :class:`RunDir`::

    config.json       the resolved config (written at the start, read back on --resume and by load_run)
    provenance.json   the tables and calibrations the search used (search.provenance)
    metrics.jsonl     one JSON line per finished epoch (appended and synced; a torn last line is dropped on read)
    checkpoint.pt     weights, control, optimisers and RNG states after the last finished epoch (atomic)
    control.pt        the final control state_dict (written once the last epoch is done)

An ``hwnas run`` output, :class:`PipelineDir`, holds one search run in ``search/`` beside its later stages
(``family/``, ``members/member-NN/``, the family table, plots and summary).

Every ``.pt`` file is written atomically (a reader sees the old file or the new one) and read with
``torch.load(weights_only=True)``; a torn or foreign file is one line naming it.
"""

from __future__ import annotations

import json
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiler.errors import UserError
from profiler.fileio import atomic_path, atomic_write_text, loads_json, locked_dir, read_jsonl, read_text

from .config import SearchConfig, config_from_dict, config_to_dict

CONFIG, METRICS, CHECKPOINT, CONTROL = "config.json", "metrics.jsonl", "checkpoint.pt", "control.pt"
PROVENANCE = "provenance.json"  # written and checked by search.provenance
RESUME_FIELDS = ("preset", "space", "tables", "data", "data_limit", "seed", "batch_size")  # must match on --resume


class SearchError(UserError, RuntimeError):
    """A search that cannot start or go on; the message is the one line shown to the user."""


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and ``os.replace``, synced: never a half-written ``path``."""
    import torch

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())


def load_state(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` whose failure on a torn or foreign file is one line naming it."""
    import torch  # here, so the CLI can import this module without torch

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch reports a bad file as RuntimeError, UnpicklingError, EOFError, ...
        raise SearchError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:100]}); "
                          f"restore it or re-run the search") from None
    if not isinstance(state, dict) or (path.name == CHECKPOINT and "model" not in state):
        raise SearchError(f"{path}: not a checkpoint written by hwnas search; restore it or re-run the search")
    return state


def _file(name: str, doc: str) -> Any:
    """A property: the path of file ``name`` in the directory."""
    return property(lambda self: self.path / name, doc=doc)


@dataclass(frozen=True)
class _Dir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def lock(self) -> AbstractContextManager[Path]:
        """The single-writer lock of the directory (a second writer gets a ``LockedError`` naming the first)."""
        return locked_dir(self.path, "run directory")


class RunDir(_Dir):
    """A search run directory (see the module docstring): its files, how a run starts or resumes in it, and how
    its config, metrics, checkpoint and control are written and read back."""

    @classmethod
    def find(cls, path: str | Path) -> "RunDir":
        """A search run directory: ``hwnas search --out`` itself, or an ``hwnas run`` output holding it in
        ``search/``."""
        path = Path(path)
        for cand in (cls(path), PipelineDir(path).search):
            if cand.config.is_file():
                return cand
        raise SearchError(f"{path}: not a run directory (no config.json, no search/config.json); give an hwnas "
                          f"search --out or an hwnas run output (e.g. runs/cpu)")

    # ----------------------------------------------------------------------------------------- files

    config = _file(CONFIG, "config.json: the resolved config of the run")
    metrics = _file(METRICS, "metrics.jsonl: one record per finished epoch")
    checkpoint = _file(CHECKPOINT, "checkpoint.pt: the state after the last finished epoch")
    control = _file(CONTROL, "control.pt: the final control state_dict")
    provenance = _file(PROVENANCE, "provenance.json: the tables and calibrations the run used")

    @property
    def started(self) -> bool:
        """A run was started here (its config is written): ``--resume`` continues it."""
        return self.config.is_file()

    @property
    def finished(self) -> bool:
        """The run's last epoch is done (its final control is written)."""
        return self.control.is_file()

    # ----------------------------------------------------------------------------------------- config

    def stored_config(self) -> dict[str, Any] | None:
        """config.json as a plain dict when it holds a run's data (for ``--resume`` defaults), else None."""
        from profiler.latency.tables import read_json_or_none

        data = read_json_or_none(self.config)
        return data if isinstance(data, dict) and isinstance(data.get("data"), str) else None

    def read_config(self) -> SearchConfig:
        """The run's config; a malformed or foreign config.json is one line naming it."""
        where = str(self.config)
        data = loads_json(read_text(self.config, "run config"), where)
        if not isinstance(data, dict):
            raise SearchError(f"{where}: not a run config (a JSON object of hwnas search); restore it or re-run the "
                              f"search")
        return config_from_dict(data, where)

    def start(self, cfg: SearchConfig, resume: bool) -> SearchConfig:
        """The config a search runs with here: ``cfg`` for a fresh run (refused in a directory that holds one), the
        stored one on ``resume`` (the identifying fields given again must match; ``epochs`` and the torch device
        may change)."""
        if not resume:
            if self.config.exists() or self.checkpoint.exists():
                raise SearchError(f"{self.path} already holds a run; pass --resume to continue it or choose another "
                                  f"--out")
            return cfg
        if not self.config.is_file():
            raise SearchError(f"{self.path}: nothing to resume (no config.json); start it without --resume")
        stored = self.read_config()
        for k in RESUME_FIELDS:
            a, b = getattr(stored, k), getattr(cfg, k)
            if a != b:
                raise SearchError(f"{self.path}: run was started with {k}={a!r}, not {b!r}; resume with the same "
                                  f"options or start a new --out")
        stored.epochs, stored.torch_device = cfg.epochs, cfg.torch_device
        return stored

    def write_start(self, cfg: SearchConfig, tables: list, resume: bool, history: list[dict[str, Any]]) -> None:
        """Write config.json, the provenance of tables and calibrations, and metrics.jsonl cut to ``history``."""
        from .provenance import record_provenance

        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config, json.dumps(config_to_dict(cfg), indent=2))
        record_provenance(self.path, tables, resume)  # which tables and calibrations this run uses
        atomic_write_text(self.metrics, "".join(json.dumps(m) + "\n" for m in history))

    # ----------------------------------------------------------------------------------------- metrics

    def read_metrics(self, before_epoch: int | None = None) -> list[dict[str, Any]]:
        """Every epoch's record (those before ``before_epoch`` only: what a resume from that epoch keeps)."""
        recs = read_jsonl(self.metrics)
        if before_epoch is None:
            return recs
        return [m for m in recs if m.get("epoch", 1 << 30) < before_epoch]

    def append_metrics(self, rec: dict[str, Any]) -> None:
        """Append one epoch's record to metrics.jsonl, synced to disk."""
        with open(self.metrics, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # ----------------------------------------------------------------------------------------- states

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_torch_save(state, self.checkpoint)

    def load_checkpoint(self, map_location: Any = "cpu") -> dict[str, Any]:
        return load_state(self.checkpoint, map_location)

    def save_control(self, state: dict[str, Any]) -> None:
        atomic_torch_save(state, self.control)

    def control_state(self) -> dict[str, Any]:
        """The trained control's state_dict: control.pt, or, for an interrupted run, the control part of the
        checkpoint."""
        if self.control.is_file():
            return load_state(self.control)
        if self.checkpoint.is_file():
            ck = load_state(self.checkpoint)
            return {k[len("control."):]: v for k, v in ck["model"].items() if k.startswith("control.")}
        raise SearchError(f"{self.path}: no control.pt or checkpoint.pt; the search has not finished an epoch")


class PipelineDir(_Dir):
    """An ``hwnas run`` output directory: the search run and the files of the later stages."""

    @property
    def search(self) -> RunDir:
        return RunDir(self.path / "search")

    family = _file("family", "family/: member-NN.json (architectures), summary.csv and stats.json, as "
                             "``hwnas derive --family`` writes them")
    members = _file("members", "members/: one folder per member")
    settings = _file("run.json", "run.json: the settings a rerun must repeat to continue")
    summary = _file("summary.txt", "summary.txt: the run's notes and family table")

    def member(self, name: str) -> Path:
        """weights.safetensors, curve.jsonl, train.json, model.onnx and result.json of one member."""
        return self.members / name

    def member_files(self, name: str) -> list[Path]:
        """Every member's file ``name`` that exists (e.g. result.json), in member order."""
        return sorted(self.members.glob(f"*/{name}")) if self.members.is_dir() else []

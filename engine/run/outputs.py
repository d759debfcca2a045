"""Guards on a run's files: never one of its inputs, never two runs on one output at once.

A run with an output takes ``<output>.lock`` (created with O_EXCL, holding its host
and process id) before it writes anything and removes it when it ends, however it
ends. A second run on the same output while the first holds it is refused with one
line (it does not wait). A lock left by a process that died (kill -9, a crash) on this
host is taken over; one from another host must be removed by hand. Holding the lock,
a run removes the temp files that a killed run on the same output left behind.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from PIL import Image

from ..config import TransferConfig
from ..errors import RunError
from .records import checkpoint_path, record_path, snapshot_path, visual_paths


def run_files(output: Path, cfg: TransferConfig, iterations: int) -> dict[str, Path]:
    """Every file a run of ``cfg`` on ``output`` (``iterations`` in all) may write, by role."""
    visuals = visual_paths(output)
    asked = {"sheet": cfg.sheet, "gif": cfg.gif, "plot": cfg.plot, "tiled": cfg.tile_preview}
    files = {"output": output, "run record": record_path(output), "checkpoint": checkpoint_path(output),
             "lock file": lock_path(output), **{f"{kind} file": visuals[kind] for kind in asked if asked[kind]}}
    saved = range(cfg.save_every, iterations + 1, cfg.save_every) if cfg.save_every else ()
    files.update({f"snapshot {n}": snapshot_path(output, n) for n in saved})
    return files


def run_inputs(cfg: TransferConfig, content: Any, sources: list) -> dict[str, Path]:
    """The files a run reads, by role (images given as Pillow images are no files)."""
    inputs = {"content image": content, **{f"style image {i + 1}" if len(sources) > 1 else "style image": s
                                           for i, s in enumerate(sources)}}
    if cfg.init_file is not None:
        inputs["init image"] = cfg.init_file
    for kind in ("content", "style"):
        inputs.update({f"{kind} mask {i + 1}": p for i, p in enumerate(getattr(cfg, f"{kind}_masks") or ())})
    return {what: Path(p) for what, p in inputs.items() if not isinstance(p, Image.Image)}


def check_not_inputs(files: dict[str, Path], inputs: dict[str, Path]) -> None:
    """RunError when one of the run's files (by role) is one of its inputs: the user's files are never written."""
    for role, path in files.items():
        for what, source in inputs.items():
            if _same(path, source):
                raise RunError(f"the {role} {path} would overwrite the {what} {source}: "
                               "choose another output path, inputs are never written")


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def lock_path(output: Path) -> Path:
    return output.with_name(output.name + ".lock")


class OutputLock:
    """``with OutputLock(output):`` holds the output for this run (see the module's docstring)."""

    def __init__(self, output: Path):
        self.path = lock_path(output)
        self.output = output

    def __enter__(self) -> OutputLock:
        self.made = [folder for folder in [self.path.parent, *self.path.parent.parents] if not folder.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale():
                    raise RunError(f"{self.output} is being written by another run ({self.path} exists); wait "
                                   "for it to end or choose another output") from None
                self.path.unlink(missing_ok=True)
                continue
            except OSError as exc:
                raise RunError(f"cannot create {self.path}: {exc.strerror or exc}") from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{socket.gethostname()} {os.getpid()}\n")
            return self
        raise RunError(f"{self.output} is being written by another run ({self.path} exists); wait for it to end "
                       "or choose another output")

    def _stale(self) -> bool:
        """Whether the lock's process is gone (same host only; another host's lock is never stale here)."""
        try:
            host, pid = self.path.read_text().split()
            pid = int(pid)
        except (OSError, ValueError):
            return False  # being written right now, or not ours: leave it
        if host != socket.gethostname():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def remove_stale_temp_files(self, names: set[str]) -> None:
        """Remove the atomic writers' temp files (``.<name>.<random>.tmp<suffix>``) of these file names."""
        for path in self.output.parent.glob(".*.tmp*"):
            name = path.name[1:].rsplit(".tmp", 1)[0].rsplit(".", 1)[0]
            if name in names:
                path.unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
        for folder in self.made:  # made for a run that left nothing there (refused, stopped early): gone again
            try:
                folder.rmdir()
            except OSError:  # not empty: the run wrote there
                break

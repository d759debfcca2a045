"""The jobs of a batch: read from a JOBS file (CSV or JSON Lines) or made from folders of
contents and styles, and validated, all of them, before any work starts.

A job is one ``stylize``: a content image, one or more style images, an output path
and a TransferConfig. Its ``key`` (a checksum of the config and of the input files'
bytes) tells a re-run whether a finished job can be skipped.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import json
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..config import TransferConfig
from ..errors import ConfigError, EngineError
from ..io import images
from ..io.files import file_sha256
from ..presets import preset_config
from ..run.engine import scale_plan, sizes_for
from ..run.outputs import lock_path, run_files, run_inputs

STATE_NAME = "batch.json"  # OUTDIR/batch.json, see engine.batch.state
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# Keys of a job besides TransferConfig's fields.
JOB_KEYS = ("content", "style", "output", "preset")
_CONFIG_FIELDS = {f.name: f for f in fields(TransferConfig)}


@dataclass(frozen=True)
class Job:
    """One transfer of a batch. ``line``: where it was given (its JOBS file line, or 0)."""
    name: str                      # the output path relative to the batch folder: the job's id
    content: Path
    styles: tuple[Path, ...]
    output: Path
    config: TransferConfig
    line: int = 0
    iterations: int = 0            # all its scales' together: its snapshots' numbers

    def files(self) -> dict[str, Path]:
        """Every file its run may write, by role."""
        return run_files(self.output, self.config, self.iterations)

    def inputs(self) -> dict[str, Path]:
        """Every file its run reads, by role."""
        return run_inputs(self.config, self.content, list(self.styles))

    @property
    def layer_choice(self) -> tuple:
        """What the job's sessions depend on: jobs sharing it reuse one model, graphs and sessions."""
        cfg = self.config
        return cfg.convnet, cfg.content_layer, cfg.style_layers, cfg.pooling.value, len(cfg.content_masks or ()), \
            cfg.tileable

    def key(self) -> str:
        """sha256 of the config and the input files' bytes: equal keys give equal results."""
        digest = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        init = () if self.config.init_file is None else (Path(self.config.init_file),)
        for path in (self.content, *self.styles, *init):
            digest.update(file_sha256(path).encode())
        return digest.hexdigest()


def read_jobs(path: str | Path, out_dir: str | Path, defaults: dict[str, Any] | None = None) -> list[Job]:
    """The jobs of a CSV (header row, one job per row) or JSON Lines (one object per line) file.

    Keys: ``content``, ``style`` (several comma-separated, or a JSON list), optional
    ``output`` (relative to ``out_dir``; default ``<content>_<style>.png``), ``preset``
    and any TransferConfig field (``size``, ``iterations``, ``init``, ``style_blend``, ...;
    dashes or underscores). Relative input paths are relative to the JOBS file's folder.
    ``defaults`` apply to every job unless its row sets the key. A bad row raises
    ConfigError naming the file, its line and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"jobs file '{path}' does not exist: give a .csv or .jsonl file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"jobs file '{path}' cannot be read as UTF-8 text ({exc})") from None
    rows = _jsonl_rows(path, text) if path.suffix.lower() in (".jsonl", ".ndjson") else _csv_rows(path, text)
    if not rows:
        raise ConfigError(f"jobs file '{path}' holds no jobs: give a header row and one row per job")
    return _validated([(line, row) for line, row in rows], path, path.parent, Path(out_dir), defaults or {})


def cross_jobs(contents: str | Path, styles: str | Path, out_dir: str | Path,
               defaults: dict[str, Any] | None = None) -> list[Job]:
    """Every content image with every style image; each of ``contents`` and ``styles`` is a
    folder (its images) or a glob pattern. Outputs are ``<content>_<style>.png``."""
    found_contents, found_styles = _images_in(contents, "--contents"), _images_in(styles, "--styles")
    rows = [(0, {"content": str(c), "style": str(s)}) for c in found_contents for s in found_styles]
    return _validated(rows, None, Path.cwd(), Path(out_dir), defaults or {})


def _images_in(pattern: str | Path, option: str) -> list[Path]:
    pattern = Path(pattern)
    if pattern.is_dir():
        found = [p for p in pattern.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        found = [Path(p) for p in glob.glob(str(pattern)) if Path(p).is_file()]
    if not found:
        raise ConfigError(f"{option} '{pattern}' matches no image: give a folder of images or a glob such as "
                          "'photos/*.jpg'")
    return sorted(found)


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames:
        return []
    if None in (reader.fieldnames or []) or any(not (name or "").strip() for name in reader.fieldnames):
        raise ConfigError(f"{path}:1: an empty column name in the header: name every column")
    rows = []
    for row in reader:
        line = reader.line_num
        if None in row:
            raise ConfigError(f"{path}:{line}: more cells than the header's {len(reader.fieldnames)} columns")
        cells = {key.strip(): value.strip() for key, value in row.items() if value is not None and value.strip()}
        if cells:
            rows.append((line, cells))
    return rows


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{line}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{line}: a job is a JSON object like "
                              '{"content": "a.jpg", "style": "b.jpg"}, got ' + type(row).__name__)
        rows.append((line, row))
    return rows


def _validated(rows: list[tuple[int, dict[str, Any]]], source: Path | None, base: Path, out_dir: Path,
               defaults: dict[str, Any]) -> list[Job]:
    jobs: list[Job] = []
    by_output: dict[Path, Job] = {}
    for line, row in rows:
        where = f"{source}:{line}" if source else f"job {len(jobs) + 1}"
        try:
            job = _job(line, {**defaults, **{k.strip().replace("-", "_"): v for k, v in row.items()}}, base, out_dir)
        except EngineError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        earlier = by_output.get(job.output.resolve())
        if earlier is not None:
            said = f"line {earlier.line}" if source else f"job {jobs.index(earlier) + 1}"
            raise ConfigError(f"{where}: output '{job.output}' is also the output of {said}: "
                              "give each job its own output")
        by_output[job.output.resolve()] = job
        jobs.append(job)
    _check_files(jobs, source, out_dir)
    return jobs


def _check_files(jobs: list[Job], source: Path | None, out_dir: Path) -> None:
    """ConfigError when a job would write one of the batch's inputs (any job's content, style, init
    or mask), another job's file (x.png and x.jpg share x.json and their snapshots) or the batch's
    own state: a user's file is never overwritten, and each record says what its own run did."""
    def where(job: Job) -> str:
        return f"{source}:{job.line}" if source else f"job {jobs.index(job) + 1} ({job.name})"

    read = {}
    for job in jobs:
        for what, path in job.inputs().items():
            read.setdefault(path.resolve(), (what, job))
    written = {(out_dir / STATE_NAME).resolve(): ("state file", None),
               lock_path(out_dir / STATE_NAME).resolve(): ("lock file", None)}
    for job in jobs:
        for role, path in job.files().items():
            found = path.resolve()
            if found in read:
                what, other = read[found]
                whose = what if other is job else f"{what} of {where(other)}"
                raise ConfigError(f"{where(job)}: its {role} {path} would overwrite the {whose}: a user's file "
                                  "is never overwritten, choose another output")
            if found in written:
                role_there, other = written[found]
                owner = f"the batch's {role_there}" if other is None else f"the {role_there} of {where(other)}"
                raise ConfigError(f"{where(job)}: its {role} {path} is also {owner}: give each job an output "
                                  "name of its own (the name without its suffix names its record, snapshots and "
                                  "checkpoint)")
            written[found] = (role, job)


def _job(line: int, row: dict[str, Any], base: Path, out_dir: Path) -> Job:
    unknown = sorted(set(row) - set(JOB_KEYS) - set(_CONFIG_FIELDS))
    if unknown:
        raise ConfigError(f"unknown key '{unknown[0]}': use content, style, output, preset or a stylize option "
                          "such as size, iterations, init, style_blend")
    for needed in ("content", "style"):
        if not str(row.get(needed) or "").strip():
            raise ConfigError(f"no {needed} image: every job needs a content and a style")
    content = _input(base, row["content"], "content")
    style_value = row["style"]
    names = style_value if isinstance(style_value, list) else str(style_value).split(",")
    styles = tuple(_input(base, name, "style") for name in names if str(name).strip())
    settings = {name: _convert(name, value) for name, value in row.items() if name in _CONFIG_FIELDS}
    if "init" in settings and settings["init"] not in ("noise", "content", "style"):
        settings["init"] = str(_input(base, settings["init"], "init"))
    for kind in ("content", "style"):  # masks are inputs too: relative to the JOBS file's folder
        if settings.get(f"{kind}_masks"):
            settings[f"{kind}_masks"] = tuple(str(_input(base, mask, f"{kind} mask"))
                                              for mask in settings[f"{kind}_masks"])
    preset = row.get("preset")
    config = preset_config(str(preset), **settings) if preset else TransferConfig(**settings)
    if config.style_blend is not None and len(config.style_blend) != len(styles):
        raise ConfigError(f"{len(config.style_blend)} style_blend weights for {len(styles)} style images: "
                          "give one weight per style image")
    output = Path(str(row.get("output") or f"{content.stem}_{'+'.join(s.stem for s in styles)}.png"))
    output = output if output.is_absolute() else out_dir / output
    images.check_writable(output)
    if config.bit_depth == 16 and output.suffix.lower() not in (".png", ".tif", ".tiff"):
        raise ConfigError(f"{output}: 16-bit output needs a .png or .tif file")
    try:
        name = str(output.resolve().relative_to(out_dir.resolve()))
    except ValueError:
        name = str(output)
    # What the run would refuse before its work, refused before the batch's (as nst stylize does).
    with Image.open(content) as image:
        content_size = image.size
    sizes, per_scale = scale_plan(config, content_size)
    sizes_for(config, content_size, sizes[-1])
    return Job(name, content, styles, output, config, line, sum(per_scale))


def _input(base: Path, value: Any, what: str) -> Path:
    path = Path(str(value).strip()).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise ConfigError(f"{what} image '{path}' does not exist")
    try:
        with Image.open(path):  # the header only: a damaged body fails that job alone, later
            pass
    except (UnidentifiedImageError, OSError) as exc:
        raise ConfigError(f"{what} image '{path}' is not an image Pillow can read ({type(exc).__name__})") from None
    return path


def _convert(name: str, value: Any) -> Any:
    """A CSV cell (text) or a JSON value as the type of TransferConfig field ``name``."""
    if not isinstance(value, str):
        return value
    hint = typing.get_type_hints(TransferConfig)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if isinstance(hint, types.UnionType) and args else hint
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        return tuple(_parse(name, item, part.strip()) for part in value.split(",") if part.strip())
    if name == "size" and value.strip() == "0":
        return None  # as `stylize --size 0`: the content's own size
    return _parse(name, base, value)


def _parse(name: str, kind: type, text: str) -> Any:
    try:
        if kind is bool:
            return {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}[text.lower()]
        if kind is int:
            number = float(text)
            return int(number) if number.is_integer() else number
        if kind is float:
            return float(text)
        return text  # strings and choices: TransferConfig checks them
    except (ValueError, KeyError):
        what = {bool: "true or false", int: "a whole number", float: "a number"}.get(kind, kind.__name__)
        raise ConfigError(f"{name} must be {what}, got '{text}'") from None

#!/usr/bin/env python3
"""Make the README's gallery: run `nst stylize` once per entry and write the pictures and their Markdown.

Each entry is one `nst stylize` command on the bundled example, cheap on purpose (256 px, 10 iterations
from the content). The pictures, their run records (git-ignored) and gallery.json (command, seconds, machine load per
entry) go to docs/gallery/; the Markdown goes to docs/gallery/gallery.md and between the gallery markers
of README.md. An entry whose picture exists and whose command and input files are unchanged is skipped;
an entry needing what is missing (the VGG19 model, an option this nst lacks) gets a line saying what.

    python scripts/gallery.py                  # run what is not up to date, rewrite the Markdown
    python scripts/gallery.py --only avg_pool  # just these entries, in this order (repeat --only or use commas)
    python scripts/gallery.py --force          # run even up-to-date entries
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import html
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import typer
from PIL import Image

from benchmarks.harness import cpu_model
from engine.cli import app
from engine.errors import ModelNotFoundError
from engine.models.store import find_model

ROOT = Path(__file__).resolve().parent.parent
GALLERY = Path("docs/gallery")  # relative to ROOT, as the commands say it
CONTENT, STYLE, STYLE2 = "examples/content.jpg", "examples/style.jpg", "examples/style2.jpg"
MASKS = (f"{GALLERY}/masks/left.png", f"{GALLERY}/masks/right.png")  # made by write_masks()
# Every entry's settings unless it names the option itself: cheap, so the whole gallery takes minutes.
BASE = (("--preset", "starry_tubingen"), ("--size", "256"), ("--iterations", "10"), ("--init", "content"),
        ("--save-every", "0"))
README_START, README_END = "<!-- gallery:start (made by scripts/gallery.py) -->", "<!-- gallery:end -->"


@dataclass(frozen=True)
class Entry:
    """One picture: `nst stylize <content> <style> -o docs/gallery/<name>.jpg` with BASE and ``settings``."""

    name: str
    title: str
    caption: str
    settings: tuple[tuple[str, str | None], ...]  # (option, value), value None for a flag
    style: str = STYLE
    needs_model: str = "vgg16"
    needs_files: tuple[str, ...] = ()
    section: str = "beyond"  # "seed" or "beyond"
    tile_preview: bool = False  # also show the result repeated 2x2 (for seamless tiles)

    @property
    def output(self) -> Path:
        return GALLERY / f"{self.name}.jpg"

    @property
    def options(self) -> list[str]:
        return [option for option, _ in self.settings]

    def command(self) -> list[str]:
        """BASE's options in order (with the entry's value where it gives one), then the entry's others."""
        settings = dict(BASE) | dict(self.settings)
        parts = [part for option, value in settings.items() for part in (option, value) if part is not None]
        return ["nst", "stylize", CONTENT, self.style, "-o", str(self.output), *parts]


def _preset(name: str, caption: str, **kw) -> Entry:
    return Entry(name, name, caption, (("--preset", name),), section="seed", **kw)


# Adding a picture is adding a line here. Options this nst lacks and missing models or files are
# reported as skipped, so entries for features still being built can wait here.
ENTRIES: tuple[Entry, ...] = (
    _preset("starry_tubingen", "the seed's Starry Night weights: strong style, light content"),
    _preset("wave_chicago", "the seed's Great Wave weights: content 500, flatter style weights"),
    _preset("portrait_of_pavlos", "the seed's portrait weights: content 1000"),
    _preset("pavlos_grandma_woman_with_hat", "the seed's Part F: VGG19, each block's last conv as style layers",
            needs_model="vgg19"),
    Entry("noise_init", "from noise, as the seed", "starry_tubingen from noise: after these 200 evaluations "
          "the cat has barely emerged (the seed runs 1000)",
          (("--init", "noise"),)),
    Entry("keep_colors", "keep colours", "the style's strokes in the photo's colours (luminance transfer)",
          (("--preserve-colors", "luminance"),)),
    Entry("keep_colors_histogram", "keep colours, histogram", "the painting recoloured to the photo's colours "
          "before the run", (("--preserve-colors", "histogram"),)),
    Entry("blend", "blend of two styles", "The Starry Night 60% and Vermeer's Girl with a Pearl Earring 40%",
          (("--style-blend", "0.6,0.4"),), style=f"{STYLE},{STYLE2}", needs_files=(STYLE2,)),
    Entry("style_scale_half", "style scale 0.5", "the painting seen at half the output's size: smaller, more stars",
          (("--style-scale", "0.5"),)),
    Entry("style_scale_double", "style scale 2", "the painting seen at twice the output's size: bigger strokes",
          (("--style-scale", "2"),)),
    Entry("avg_pool", "average pooling", "average instead of max pooling, as in the Gatys paper",
          (("--pooling", "avg"),)),
    Entry("coarse_to_fine", "coarse to fine", "10 iterations at 128 px, then 10 at 256 px from their result upsampled: "
          "bigger strokes, less of the photo",
          (("--scales", "2"),)),
    Entry("regions", "regions", "The Starry Night on the left half, the Pearl Earring on the right",
          (("--content-masks", ",".join(MASKS)),), style=f"{STYLE},{STYLE2}", needs_files=(STYLE2, *MASKS)),
    Entry("tileable", "seamless tile", "the result wraps around like a torus; shown repeated 2x2",
          (("--tileable", None),), tile_preview=True),
)


@dataclass
class LoadSampler:
    """The 1-minute load average, read every few seconds while a command runs (the machine may be shared)."""

    every: float = 2.0
    samples: list[float] = field(default_factory=list)

    def __enter__(self) -> "LoadSampler":
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.every):
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stylize_options() -> set[str]:
    """The option names this `nst stylize` accepts."""
    command = typer.main.get_command(app).commands["stylize"]
    return {name for param in command.params for name in getattr(param, "opts", ())}


def missing(entry: Entry, options: set[str]) -> str | None:
    """Why the entry cannot run here, or None."""
    lacking = [o for o in entry.options if o not in options]
    if lacking:
        return f"needs `nst stylize {' '.join(lacking)}`, which this nst does not have yet"
    try:
        find_model(entry.needs_model)
    except ModelNotFoundError:
        return f"needs the {entry.needs_model.upper()} model: run `nst export {entry.needs_model}` first"
    absent = [f for f in entry.needs_files if not (ROOT / f).is_file()]
    if absent:
        return f"needs {', '.join(absent)}"
    return None


def write_masks() -> None:
    """Two complementary masks at the content's size: the left half, the right half, blended over a tenth."""
    width, height = Image.open(ROOT / CONTENT).size
    ramp = np.clip((np.arange(width) / width - 0.45) / 0.1, 0.0, 1.0)
    for path, row in zip(MASKS, (1.0 - ramp, ramp)):
        mask = Image.fromarray(np.tile(np.round(255 * row).astype(np.uint8), (height, 1)))
        (ROOT / path).parent.mkdir(parents=True, exist_ok=True)
        mask.save(ROOT / path)


def inputs_of(entry: Entry) -> dict[str, str]:
    files = [CONTENT, *entry.style.split(","), *entry.needs_files]
    return {f: sha256(ROOT / f) for f in dict.fromkeys(files)}


def up_to_date(entry: Entry, done: dict) -> bool:
    return ((ROOT / entry.output).is_file() and done.get("command") == shlex.join(entry.command())
            and done.get("inputs") == inputs_of(entry))


def run(entry: Entry, nst: Path) -> dict:
    """Run the entry's command; what it took and how loaded the machine was. RuntimeError if it failed."""
    (ROOT / GALLERY).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with LoadSampler() as load:
        proc = subprocess.run([str(nst), *entry.command()[1:]], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    record = json.loads((ROOT / entry.output.with_suffix(".json")).read_text())
    if entry.tile_preview:
        image = Image.open(ROOT / entry.output)
        tiles = Image.new("RGB", (image.width * 2, image.height * 2))
        for x in (0, image.width):
            for y in (0, image.height):
                tiles.paste(image, (x, y))
        tiles.save(ROOT / GALLERY / f"{entry.name}_2x2.jpg", quality=90)
    return {
        "command": shlex.join(entry.command()), "inputs": inputs_of(entry), "seconds": round(seconds, 1),
        "load_mean": round(sum(load.samples) / len(load.samples), 2), "load_max": round(max(load.samples), 2),
        "cores": os.cpu_count(), "cpu": cpu_model(), "date": datetime.datetime.now(datetime.timezone.utc)
        .strftime("%Y-%m-%d %H:%M UTC"), "provider": record.get("provider", "?"),
        "loss": record["iterations"][-1]["loss"] if record.get("iterations") else None,
    }


def _html(text: str) -> str:
    """Text for an HTML cell, where Markdown is not read: `code` becomes <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text, quote=False))


def _img(path: Path, prefix: str, alt: str, width: int = 256) -> str:
    return f'<img src="{prefix}{path.as_posix()}" width="{width}" alt="{html.escape(alt)}">'


def _cell(entry: Entry, done: dict | None, why_not: str | None, prefix: str) -> str:
    title = f"<b>{_html(entry.title)}</b><br>{_html(entry.caption)}"
    if done is None:
        return f"<td>{title}<br><i>not made: {_html(why_not or 'not run yet, `make gallery` makes it')}</i></td>"
    shown = GALLERY / f"{entry.name}_2x2.jpg" if entry.tile_preview else entry.output
    numbers = (f"{done['seconds']:.0f} s on {done['cores']} cores, load {done['load_mean']:.1f} "
               f"(max {done['load_max']:.1f})" + (f", loss {done['loss']:.2e}" if done.get("loss") else ""))
    return (f"<td>{_img(shown, prefix, entry.title)}<br>{title}<br>{numbers}<br>"
            f"<details><summary>command</summary><code>{_html(done['command'])}</code></details></td>")


def _rows(cells: list[str], per_row: int = 3) -> list[str]:
    return [line for i in range(0, len(cells), per_row) for line in ("<tr>", *cells[i:i + per_row], "</tr>")]


def markdown(results: dict, reasons: dict, prefix: str) -> str:
    """The gallery as Markdown (HTML tables); image paths start with ``prefix``."""
    inputs = [(CONTENT, "content: Chelsea the cat (CC0)"), (STYLE, "style: The Starry Night, van Gogh (public domain)")]
    if (ROOT / STYLE2).is_file():
        inputs.append((STYLE2, "second style: Girl with a Pearl Earring, Vermeer (public domain)"))
    runs = [r for r in results.values() if r]
    cpus = sorted({f"{r['cores']} cores of {r['cpu']}" for r in runs})
    lines = ["<table><tr>", *(f"<td>{_img(Path(p), prefix, text)}<br>{_html(text)}</td>" for p, text in inputs),
             "</tr></table>"]
    for section, heading in (("seed", "The seed's four parameter sets"), ("beyond", "Beyond the seed")):
        cells = [_cell(e, results.get(e.name), reasons.get(e.name), prefix) for e in ENTRIES if e.section == section]
        lines += ["", f"**{heading}**", "", "<table>", *_rows(cells), "</table>"]
    lines += ["", *textwrap.wrap(
        "Each picture is the bundled cat photo painted by the one `nst stylize` command under it (open "
        "*command*): 256 px, 10 iterations of 20 evaluations, starting from the photo; cheap on purpose, "
        "so `make gallery` remakes the page in minutes. Times are the command's wall time, start-up "
        f"included, on {', '.join(cpus) or 'this machine'}; the load average sampled during each run "
        "stands beside its time (a load above the core count means other work shared the CPU and the run "
        "took longer than it would alone).", 100)]
    return "\n".join(lines) + "\n"


def write_readme(fragment: str) -> bool:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    readme.write_text(f"{head}{README_START}\n{fragment}{README_END}{tail}")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only these entries, in this order (comma-separated or repeated); "
                        "the Markdown keeps the others")
    parser.add_argument("--force", action="store_true", help="run entries even when their picture is up to date")
    parser.add_argument("--list", action="store_true", help="list the entries and exit")
    args = parser.parse_args()
    if args.list:
        for entry in ENTRIES:
            print(f"{entry.name:32} {shlex.join(entry.command())}")
        return
    only = [name for value in args.only for name in value.split(",") if name]
    unknown = set(only) - {entry.name for entry in ENTRIES}
    if unknown:
        raise SystemExit(f"unknown entry {', '.join(sorted(unknown))}: see --list")
    nst = Path(sys.executable).with_name("nst")
    if not nst.is_file():
        raise SystemExit(f"no nst beside {sys.executable}: install the project first (make .venv/bin/nst)")

    book_path = ROOT / GALLERY / "gallery.json"  # what each picture's run took, by entry name
    book = json.loads(book_path.read_text()) if book_path.is_file() else {}
    options, failed = stylize_options(), []
    write_masks()
    reasons = {entry.name: why for entry in ENTRIES if (why := missing(entry, options))}
    by_name = {entry.name: entry for entry in ENTRIES}
    for entry in [by_name[name] for name in dict.fromkeys(only)] if only else ENTRIES:
        why_not = reasons.get(entry.name)
        if why_not:
            kept = " (keeping the picture made before)" if entry.name in book else ""
            print(f"skipped {entry.name}: {why_not}{kept}")
        elif not args.force and up_to_date(entry, book.get(entry.name, {})):
            print(f"up to date {entry.name}")
        else:
            print(f"running {entry.name}: {shlex.join(entry.command())}", flush=True)
            try:
                book[entry.name] = done = run(entry, nst)
            except RuntimeError as exc:  # a bug to fix, but the other entries are still worth making
                failed.append(entry.name)
                print(f"FAILED  {entry.name}: {exc}", flush=True)
                continue
            print(f"        {done['seconds']:.0f} s, load {done['load_mean']:.1f} on {done['cores']} cores",
                  flush=True)
            publish(book, reasons)  # after each run, so an interrupted gallery keeps what it made
    readme = publish(book, reasons)
    print(f"wrote {GALLERY / 'gallery.json'}, {GALLERY / 'gallery.md'}"
          + (" and README.md's gallery" if readme else f"; README.md has no {README_START} ... {README_END} to fill"))
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (their pictures, if any, are the ones made before)")


def publish(book: dict, reasons: dict) -> bool:
    """Write gallery.json, gallery.md and README.md's gallery; False if README.md has no gallery markers."""
    (ROOT / GALLERY / "gallery.json").write_text(json.dumps(book, indent=2) + "\n")
    (ROOT / GALLERY / "gallery.md").write_text(markdown(book, reasons, prefix="../../"))
    return write_readme(markdown(book, reasons, ""))


if __name__ == "__main__":
    main()

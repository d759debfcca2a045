"""scripts/gallery.py: its commands are ones the real CLI accepts, and what it skips it says why."""
from __future__ import annotations

import importlib.util
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import typer

from engine.cli import app

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gallery():
    spec = importlib.util.spec_from_file_location("gallery", ROOT / "scripts" / "gallery.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gallery"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_runnable_entry_is_a_command_the_cli_parses(gallery):
    stylize = typer.main.get_command(app).commands["stylize"]
    options = gallery.stylize_options()
    for entry in gallery.ENTRIES:
        lacking = {option for option in entry.options if option not in options}
        if lacking:  # only features still being built may be missing, not a misspelt option
            assert lacking <= {"--content-masks", "--style-masks", "--tileable"}, entry.name
            continue
        command = entry.command()
        assert command[:2] == ["nst", "stylize"]
        context = stylize.make_context("stylize", command[2:], resilient_parsing=False)
        assert Path(context.params["output"]) == Path("docs/gallery") / f"{entry.name}.jpg"


def test_an_entry_overrides_the_base_settings_instead_of_repeating_them(gallery):
    entry = gallery.Entry("x", "x", "x", (("--init", "noise"), ("--pooling", "avg"), ("--gif", None)))
    command = entry.command()
    assert command.count("--init") == 1 and command[command.index("--init") + 1] == "noise"
    assert command[-3:] == ["--pooling", "avg", "--gif"]
    preset = gallery.Entry("p", "p", "p", (("--preset", "wave_chicago"),))
    assert preset.command()[preset.command().index("--preset") + 1] == "wave_chicago"


def test_an_option_the_cli_lacks_and_a_missing_model_are_said(gallery, monkeypatch):
    future = gallery.Entry("future", "future", "future", (("--no-such-option", None),))
    assert "--no-such-option" in gallery.missing(future, gallery.stylize_options())

    def no_model(arch):
        raise gallery.ModelNotFoundError(f"no {arch}.onnx")

    monkeypatch.setattr(gallery, "find_model", no_model)
    vgg19 = gallery.Entry("v", "v", "v", (("--preset", "pavlos_grandma_woman_with_hat"),), needs_model="vgg19")
    reason = gallery.missing(vgg19, gallery.stylize_options())
    assert "VGG19" in reason and "nst export vgg19" in reason
    cell = gallery.markdown({}, {"pavlos_grandma_woman_with_hat": reason}, "")
    assert "not made: needs the VGG19 model" in cell


def test_a_changed_input_makes_an_entry_stale(gallery, tmp_path, monkeypatch):
    for name in ("examples/content.jpg", "examples/style.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    monkeypatch.setattr(gallery, "ROOT", tmp_path)
    entry = gallery.ENTRIES[0]
    (tmp_path / entry.output).parent.mkdir(parents=True)
    (tmp_path / entry.output).write_bytes(b"picture")
    done = {"command": shlex.join(entry.command()), "inputs": gallery.inputs_of(entry)}
    assert gallery.up_to_date(entry, done)
    (tmp_path / "examples/style.jpg").write_bytes(b"another painting")
    assert not gallery.up_to_date(entry, done)
    assert not gallery.up_to_date(entry, {**done, "command": "nst stylize something else"})

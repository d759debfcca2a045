"""``nst --help`` and every command's help: each option says what it does and its default, visibly.

Rich reads ``[...]`` in help text as markup and drops it, so a default written as
``[default: 20]`` would vanish; this renders the help as a user sees it, piped and on a
terminal, and looks for every option's default in its own row.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from enum import Enum
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from engine import TransferConfig, __version__
from engine.cli import app

runner = CliRunner()
COMMANDS = sorted(get_command(app).commands)
PANELS = {"Seed parameters", "Beyond the seed", "Output and records", "Runtime"}
CONFIG_DEFAULTS = {f.name: getattr(TransferConfig(), f.name) for f in dataclasses.fields(TransferConfig)}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def shown(value) -> str:
    """How a default reads in help, written here independently of the CLI's own helper."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ", ".join(shown(v) for v in value)
    return str(value)


def option_rows(text: str) -> dict[str, str]:
    """{--option: its help row} from a rendered help page (one row per option at this width)."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"│\s*\*?\s*(--[\w-]+)", line)
        if match:
            rows[match.group(1)] = line
    return rows


def expected_default(param) -> str | None:
    """The text that must follow 'default: ' in a parameter's help (None: any value)."""
    if param.required:
        return None
    if param.default is None:  # the CLI leaves it to the config (or a preset)
        value = CONFIG_DEFAULTS.get(param.name)
        return None if value is None else shown(value)  # None: said in words ("never stop early")
    if isinstance(param.default, Path):
        return param.default.name  # a bundled file may be shown relative to the checkout
    if isinstance(param.default, (list, tuple)):
        return ",".join(map(str, param.default))
    return shown(param.default)


def check_page(name: str, text: str) -> None:
    command = get_command(app).commands[name]
    rows = option_rows(text)
    for param in command.params:
        if param.param_type_name != "option" or param.name == "help":
            continue
        flag = max(param.opts, key=len)
        assert flag in rows, f"{name}: {flag} missing from the help page"
        row = rows[flag]
        assert "default:" in row or "Required." in row, f"{name} {flag}: no default shown: {row}"
        want = expected_default(param)
        if want is not None and "Required." not in row:
            assert want in row.split("default: ", 1)[1], f"{name} {flag}: default {want!r} not shown: {row}"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_shows_its_help_and_default_when_piped(name):
    result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "320"})
    assert result.exit_code == 0, result.output
    check_page(name, result.output)


def test_every_option_shows_its_help_and_default_on_a_terminal():
    # Typer decides "terminal" when it is imported: render in a fresh process that believes it has one.
    script = ("import sys\nfrom engine.cli import app\nfor name in sys.argv[1:]:\n    print('=== ' + name)\n"
              "    try: app([name, '--help'], prog_name='nst')\n    except SystemExit: pass\n")
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "320", "TERMINAL_WIDTH": "320"}
    out = subprocess.run([sys.executable, "-c", script, *COMMANDS], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "\x1b[" in out.stdout  # really rendered as on a terminal
    pages = ANSI.sub("", out.stdout).split("=== ")[1:]
    assert [page.split("\n", 1)[0] for page in pages] == COMMANDS
    for page in pages:
        name, text = page.split("\n", 1)
        check_page(name, text)


def test_stylize_options_sit_in_the_four_panels_and_usage_names_the_arguments():
    result = runner.invoke(app, ["stylize", "--help"], env={"COLUMNS": "320"}, prog_name="nst")
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert "nst stylize [OPTIONS] CONTENT [STYLE]" in usage
    panels = set(re.findall(r"╭─ ([\w ]+?) ─", result.output))
    assert panels == PANELS | {"Arguments", "Options"}  # Options: --help alone
    options_panel = result.output.split("╭─ Options")[1].split("╰")[0]
    assert re.findall(r"--[\w-]+", options_panel) == ["--help"]
    assert "Examples:" in result.output and "nst stylize cat.jpg" in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_an_example(name):
    result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"})
    assert re.search(r"Examples?:", result.output), result.output


def test_version_and_completion():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"nst {__version__}"
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "--install-completion" in result.output and "--show-completion" in result.output
    result = runner.invoke(app, ["--show-completion", "bash"], prog_name="nst")
    assert result.exit_code == 0 and "_nst_completion" in result.output

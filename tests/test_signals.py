"""Real signals to a real `nst stylize` process: SIGTERM, Ctrl-C at start-up and twice, kill -9 then --resume."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from engine.cli import app
from features_support import CONTENT, STYLE

NST = Path(sys.executable).parent / "nst"
pytestmark = pytest.mark.skipif(not NST.exists(), reason="the nst script is not installed beside this python")


def args(output: Path, models_dir: Path, iterations: int = 12) -> list[str]:
    return ["stylize", str(CONTENT), str(STYLE), "-o", str(output), "--size", "32", "--iterations", str(iterations),
            "--maxfun", "3", "--threads", "1", "--provider", "cpu", "--models-dir", str(models_dir)]


def start(output: Path, models_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([str(NST), *args(output, models_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def checkpoint_iteration(output: Path) -> int:
    """The last iteration in the checkpoint beside ``output`` (0 while there is none)."""
    path = output.with_name(f"{output.stem}_checkpoint.npz")
    try:
        with np.load(path) as data:
            iterations = json.loads(str(data["header"]))["iterations"]
    except (OSError, ValueError, KeyError):
        return 0
    return iterations[-1]["iteration"] if iterations else 0


def wait_for_iteration(process: subprocess.Popen, output: Path, iteration: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while checkpoint_iteration(output) < iteration:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run did not get going"
        time.sleep(0.05)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_sigterm_is_handled_like_ctrl_c_and_the_run_resumes(tmp_path, models_dir):
    output = tmp_path / "cat.png"
    process = start(output, models_dir)
    wait_for_iteration(process, output, 2)
    process.send_signal(signal.SIGTERM)
    code, stderr = finish(process)
    assert code == 143, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr and "--resume continues" in stderr
    record = json.loads((tmp_path / "cat.json").read_text())
    done = len(record["iterations"])
    assert record["status"] == "interrupted" and record["output"] is None and done >= 2
    assert record["checkpoint"] == str(tmp_path / "cat_checkpoint.npz")
    # The signal may land between an iteration's snapshot and its end: the record lists that file too.
    snapshots = [f"cat_at_iteration_{n}.png" for n in range(1, done + 1)]
    assert [Path(f).name for f in record["files"]][:done] == snapshots and len(record["files"]) <= done + 1
    assert names(tmp_path) == sorted(["cat.json", "cat_checkpoint.npz"] + [Path(f).name for f in record["files"]])
    resumed = CliRunner().invoke(app, args(output, models_dir) + ["--resume"])
    assert resumed.exit_code == 0, resumed.output
    record = json.loads((tmp_path / "cat.json").read_text())
    assert record["status"] == "finished" and [it["iteration"] for it in record["iterations"]] == list(range(1, 13))


@pytest.mark.parametrize("delay", [0.2, 0.35, 0.5])
def test_ctrl_c_while_importing_exits_130_without_a_traceback(tmp_path, models_dir, delay):
    process = start(tmp_path / "cat.png", models_dir)
    time.sleep(delay)   # the interpreter is up, the engine's imports (numpy, onnxruntime, onnx: ~0.7 s) are not done
    process.send_signal(signal.SIGINT)
    code, stderr = finish(process)
    assert code == 130, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    assert names(tmp_path) == []


def test_a_second_ctrl_c_exits_at_once_and_quietly(tmp_path, models_dir):
    output = tmp_path / "cat.png"
    process = start(output, models_dir)
    wait_for_iteration(process, output, 1)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    code, stderr = finish(process)
    assert code == 130, stderr
    assert "Traceback" not in stderr
    if (tmp_path / "cat.json").exists():   # whole, if the first interrupt got to write it (atomic writes)
        assert json.loads((tmp_path / "cat.json").read_text())["status"] == "interrupted"


def test_kill_9_loses_at_most_the_iteration_in_progress(tmp_path, models_dir):
    output = tmp_path / "cat.png"
    (tmp_path / "cat.json").write_text(json.dumps({"status": "finished", "config": {"size": 64}}))  # an earlier run's
    process = start(output, models_dir)
    wait_for_iteration(process, output, 3)
    process.kill()
    process.wait()
    # The record is the killed run's from its start: not the earlier run's, whose snapshots it replaced.
    record = json.loads((tmp_path / "cat.json").read_text())
    assert record["status"] == "running" and record["config"]["size"] == 32
    kept = checkpoint_iteration(output)
    snapshots = [int(n.rsplit("_", 1)[1][:-4]) for n in names(tmp_path) if "_at_iteration_" in n]
    assert kept >= max(snapshots) - 1   # the snapshot of an iteration is written just before its checkpoint
    assert (tmp_path / "cat.png.lock").exists()   # the dead run's lock: taken over below
    left = tmp_path / ".cat_checkpoint.npz.x1y2z3a4.tmp.npz"   # as a write cut short by the kill leaves
    left.write_bytes(b"half")
    resumed = CliRunner().invoke(app, args(output, models_dir) + ["--resume"])
    assert resumed.exit_code == 0, resumed.output
    record = json.loads((tmp_path / "cat.json").read_text())
    assert record["status"] == "finished" and record["resumed_after_iteration"] == kept
    assert [it["iteration"] for it in record["iterations"]] == list(range(1, 13))
    assert not (tmp_path / "cat.png.lock").exists()
    assert not [n for n in names(tmp_path) if n.startswith(".")]

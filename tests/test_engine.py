"""The long-lived Engine: sessions and graphs shared by runs, threads, cancelling."""
from __future__ import annotations

import gc
import json
import threading
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import engine.run.engine as run_engine
from engine import Engine, Evaluated, IterationDone, StyleTransfer
from engine.graph import lossgrad
from features_support import CONTENT, STYLE, tiny_config


@pytest.fixture
def counted(monkeypatch) -> dict[str, list]:
    """Every session opened and every graph lookup (find or build) from now on."""
    calls: dict[str, list] = {"sessions": [], "graphs": []}
    real_session, real_graphs = run_engine.create_session, lossgrad.graph_paths

    def create_session(source, *args, **kwargs):
        calls["sessions"].append(source)
        return real_session(source, *args, **kwargs)

    def graph_paths(*args, **kwargs):
        calls["graphs"].append(args)
        return real_graphs(*args, **kwargs)

    monkeypatch.setattr(run_engine, "create_session", create_session)
    monkeypatch.setattr(lossgrad, "graph_paths", graph_paths)
    return calls


def cpu_engine(models_dir: Path) -> Engine:
    return Engine(models_dir, provider="cpu", threads=2)


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_the_second_run_with_the_same_layers_opens_no_session_and_builds_no_graph(models_dir, tmp_path, counted):
    eng = cpu_engine(models_dir)
    first = eng.run(tiny_config(), CONTENT, STYLE, tmp_path / "a.png")
    opened, looked_up = len(counted["sessions"]), len(counted["graphs"])
    assert opened == 3 and looked_up == 1   # content + style targets and loss sessions, one set of graphs
    # Another image pair, size, weights and seed: only the layer choice decides what is shared.
    second = StyleTransfer(tiny_config(size=48, content_weight=5.0, seed=3), engine=eng).run(
        STYLE, CONTENT, tmp_path / "b.png")
    assert (len(counted["sessions"]), len(counted["graphs"])) == (opened, looked_up)
    assert first.status == second.status == "finished"
    assert second.image.shape[1] == 48
    # Another layer choice gets graphs and sessions of its own.
    eng.run(tiny_config(content_layer="block3_conv2"), CONTENT, STYLE, tmp_path / "c.png")
    assert (len(counted["sessions"]), len(counted["graphs"])) == (opened + 3, looked_up + 1)


def test_an_engine_keeps_the_sessions_of_its_last_two_layer_choices_only(models_dir, tmp_path, counted):
    """A long-lived engine fed many layer choices (a server's jobs) lets go of the oldest one's
    sessions, so its memory stays bounded; the choices it keeps open no session again."""
    eng = cpu_engine(models_dir)
    choices = [tiny_config(content_layer=layer) for layer in ("block3_conv2", "block3_conv1", "block2_conv2")]
    eng.run(choices[0], CONTENT, STYLE)
    first_loss = weakref.ref(eng._session("loss", choices[0]))
    eng.run(choices[1], CONTENT, STYLE)
    eng.run(choices[0], CONTENT, STYLE)   # used again: now the most recent
    opened = len(counted["sessions"])
    assert opened == 6
    eng.run(choices[2], CONTENT, STYLE)   # a third: choices[1]'s sessions are let go
    eng.run(choices[0], CONTENT, STYLE)
    assert len(counted["sessions"]) == opened + 3
    assert first_loss() is not None       # still open: kept, not reopened
    eng.run(choices[1], CONTENT, STYLE)   # let go of before: opened again, and choices[2]'s let go
    assert len(counted["sessions"]) == opened + 6
    eng.run(choices[2], CONTENT, STYLE)   # ... and choices[0]'s now
    gc.collect()
    assert first_loss() is None           # closed: its weights and arena freed


def test_graphs_removed_from_the_cache_by_another_process_are_built_again(models_dir, tmp_path, counted):
    eng = cpu_engine(models_dir)
    config = tiny_config(content_layer="block3_conv3", init="content")   # the content graph is not opened
    eng.run(config, CONTENT, STYLE)
    graphs = eng.graphs(config)
    graphs.content.unlink()   # as another process's trim_cache would
    result = eng.run(replace(config, init="noise"), CONTENT, STYLE)
    assert result.status == "finished" and graphs.content.is_file()
    assert len(counted["graphs"]) == 2


def test_only_the_files_a_run_asks_for_are_checked_against_its_inputs(models_dir, tmp_path):
    """A content photo cat.gif beside -o cat.png: refused only when a GIF of the snapshots is asked for."""
    photo = tmp_path / "cat.gif"
    Image.open(CONTENT).convert("RGB").save(photo)
    before = photo.read_bytes()
    eng = cpu_engine(models_dir)
    assert eng.run(tiny_config(), photo, STYLE, tmp_path / "cat.png").status == "finished"
    with pytest.raises(run_engine.RunError, match=r"the gif file .*cat\.gif would overwrite the content image"):
        eng.run(tiny_config(gif=True), photo, STYLE, tmp_path / "cat.png")
    assert photo.read_bytes() == before


def test_a_record_is_told_apart_by_its_output_name_not_its_folder(models_dir, tmp_path):
    """cat.json of a run on cat.png stops a run on cat.jpg (see test_bad_inputs), not one on cat.png in
    a folder moved since the record was written; a new run's record names its own output."""
    out = tmp_path / "moved"
    out.mkdir()
    (out / "cat.json").write_text(json.dumps({"status": "finished", "target": str(tmp_path / "before" / "cat.png"),
                                              "output": str(tmp_path / "before" / "cat.png")}))
    assert cpu_engine(models_dir).run(tiny_config(), CONTENT, STYLE, out / "cat.png").status == "finished"
    assert json.loads((out / "cat.json").read_text())["target"] == str(out / "cat.png")


def test_a_run_refused_under_its_lock_leaves_no_folder_it_made(models_dir, tmp_path):
    with pytest.raises(run_engine.RunError, match="nothing to resume"):
        cpu_engine(models_dir).run(tiny_config(), CONTENT, STYLE, tmp_path / "new" / "sub" / "cat.png", resume=True)
    assert files(tmp_path) == []
    (tmp_path / "mine").mkdir()   # a folder that was there stays, empty or not
    with pytest.raises(run_engine.RunError, match="nothing to resume"):
        cpu_engine(models_dir).run(tiny_config(), CONTENT, STYLE, tmp_path / "mine" / "cat.png", resume=True)
    assert files(tmp_path) == ["mine"]


def test_a_run_loads_each_image_once(models_dir, tmp_path, monkeypatch):
    loaded = []
    real = run_engine.images.load_image
    monkeypatch.setattr(run_engine.images, "load_image", lambda path, *a, **k: loaded.append(Path(path)) or real(
        path, *a, **k))
    cpu_engine(models_dir).run(tiny_config(scales=2, size=64), CONTENT, STYLE, tmp_path / "a.png")
    assert sorted(loaded) == sorted([CONTENT, STYLE])


def test_two_runs_from_two_threads_on_one_engine_give_what_each_gives_alone(models_dir):
    eng = cpu_engine(models_dir)
    jobs = [(tiny_config(seed=1, iterations=2), CONTENT, STYLE), (tiny_config(size=40, seed=2), STYLE, CONTENT)]
    alone = [eng.run(*job).image for job in jobs]
    together: list = [None, None]
    barrier = threading.Barrier(2)

    def work(i: int) -> None:
        barrier.wait()
        together[i] = eng.run(*jobs[i]).image

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert alone[0].shape != alone[1].shape
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)


def test_cancel_from_another_thread_stops_before_the_next_evaluation(models_dir, tmp_path):
    cancel = threading.Event()
    events = []

    def callback(event):
        events.append(event)
        if isinstance(event, Evaluated) and event.evaluation == 6:   # iteration 1 took 4-5 evaluations
            setter = threading.Thread(target=cancel.set)
            setter.start()
            setter.join()

    output = tmp_path / "cat.png"
    result = cpu_engine(models_dir).run(tiny_config(iterations=3, maxfun=4, save_every=1), CONTENT, STYLE, output,
                                        callback=callback, cancel=cancel)
    assert result.status == "cancelled"
    assert [e.evaluation for e in events if isinstance(e, Evaluated)][-1] == 6
    done = [e for e in events if isinstance(e, IterationDone)]
    assert len(done) == 1 and result.iterations == done
    record = json.loads((tmp_path / "cat.json").read_text())
    assert record["status"] == "cancelled" and record["output"] is None and record["evaluations"] == 6
    assert record["checkpoint"] == str(result.checkpoint) and result.checkpoint.is_file()
    assert record["files"] == [str(tmp_path / "cat_at_iteration_1.png")]
    assert result.output is None and not output.exists()
    assert files(tmp_path) == ["cat.json", "cat_at_iteration_1.png", "cat_checkpoint.npz"]
    with Image.open(tmp_path / "cat_at_iteration_1.png") as snapshot:   # the finished iteration's image
        np.testing.assert_array_equal(np.asarray(snapshot.convert("RGB")), result.image)


def test_cancel_from_the_callback_after_an_iteration_returns_that_iterations_image(models_dir):
    cancel = threading.Event()
    events = []

    def callback(event):
        events.append(event)
        if isinstance(event, IterationDone) and event.iteration == 2:
            cancel.set()

    result = cpu_engine(models_dir).run(tiny_config(iterations=4, maxfun=3), CONTENT, STYLE, callback=callback,
                                        cancel=cancel)
    assert result.status == "cancelled" and [it.iteration for it in result.iterations] == [1, 2]
    assert not any(isinstance(e, Evaluated) for e in events[events.index(result.iterations[-1]) + 1:])
    assert result.image.shape == (21, 32, 3)


def test_cancel_set_before_the_run_stops_it_before_any_work(models_dir, tmp_path):
    cancel = threading.Event()
    cancel.set()
    events = []
    result = cpu_engine(models_dir).run(tiny_config(), CONTENT, STYLE, tmp_path / "cat.png", events.append, cancel)
    assert result.status == "cancelled" and events == [] and result.image.size == 0
    assert files(tmp_path) == [] and result.record is None   # no record claimed that was never written

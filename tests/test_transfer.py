"""The optimisation with the real VGG16 at tiny sizes: the loss it minimises, the ONNX
Runtime runs it makes, the seed's loop and files, the run record, and Ctrl-C.

Expected numbers come from tests/loss_reference.py (float64, engine-free) or the
committed manifest, never from the code under test.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from typer.testing import CliRunner

import loss_reference as ref
import engine.run.optimize as optimize_module
import engine.run.engine as run_engine
from engine import Evaluated, IterationDone, Prepared, StyleTransfer, TransferConfig
from engine.cli import app

ROOT = Path(__file__).resolve().parent.parent
CONTENT = ROOT / "examples" / "content.jpg"
STYLE = ROOT / "examples" / "style.jpg"
MANIFEST = ROOT / "exported_models" / "manifest.json"

LOSS_RTOL = 1e-4
GRAD_REL_L2 = 1e-3

# The seed's starry_tubingen weights and loop (noise start, L-BFGS restarted each iteration), small enough to run in well under a second.
SEED_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")
TINY = dict(size=32, content_layer="block4_conv2", style_layers=SEED_LAYERS, content_weight=100.0,
            style_weights=(1000.0, 100.0, 12.0, 1.0, 1.0), tv_weight=200.0, optimizer_mode="seed", init="noise",
            iterations=3, maxfun=4)


def tiny_config(**changes) -> TransferConfig:
    return TransferConfig(**{**TINY, **changes})


def engine_for(models_dir: Path, **changes) -> StyleTransfer:
    return StyleTransfer(tiny_config(**changes), models_dir=models_dir, provider="cpu", threads=2)


def leftover_temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or "tmp" in p.name]



@pytest.fixture
def ort_runs(monkeypatch) -> list:
    """Every ``run_with_iobinding`` call of any ONNX Runtime session, as it happens."""
    calls = []
    real = ort.InferenceSession.run_with_iobinding

    def counting(self, *args, **kwargs):
        calls.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run_with_iobinding", counting)
    return calls


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, models_dir):
    """One complete tiny run with output: 3 iterations, snapshots every 2nd, events collected."""
    folder = tmp_path_factory.mktemp("finished")
    events = []
    result = engine_for(models_dir, save_every=2).run(CONTENT, STYLE, folder / "cat.png", callback=events.append)
    return folder, result, events


# ---------------------------------------------------------------- Problem


def test_problem_loss_and_grad_match_float64_reference(models_dir, vgg16_layers):
    cfg = tiny_config()
    problem = StyleTransfer(cfg, models_dir=models_dir, provider="cpu", threads=2).prepare(CONTENT, STYLE)
    assert problem.shape == (1, 3, 16, 32)   # 32x21 rounded to a multiple of 16 for block5
    x = problem.initial_image()
    loss, grad = problem.loss_and_grad(x)
    assert type(loss) is float
    assert grad.shape == x.shape and grad.dtype == np.float64

    content_target, grams = ref.targets(vgg16_layers, problem.content[0], problem.styles[0][0],
                                        cfg.content_layer, cfg.style_layers)
    terms, expected_grad = ref.loss_and_grad(vgg16_layers, x[0], content_target, grams, cfg.content_weight,
                                             cfg.style_weights, cfg.tv_weight, cfg.content_layer,
                                             cfg.style_layers)
    assert loss == pytest.approx(terms["loss"], rel=LOSS_RTOL)
    assert ref.relative_l2(grad[0], expected_grad) <= GRAD_REL_L2
    summary = problem.terms(x)
    for name in ("loss", "content", "tv", *(f"style.{layer}" for layer in cfg.style_layers)):
        assert summary[name] == pytest.approx(terms[name], rel=LOSS_RTOL), name
    style_total = sum(terms[f"style.{layer}"] for layer in cfg.style_layers)
    assert summary["style"] == pytest.approx(style_total, rel=LOSS_RTOL)

    flat_loss, flat_grad = problem.loss_and_grad(x.ravel())
    assert flat_grad.shape == x.ravel().shape
    assert flat_loss == pytest.approx(loss, rel=1e-6)
    np.testing.assert_allclose(flat_grad, grad.ravel(), rtol=1e-5, atol=1e-6 * np.abs(grad).max())


@pytest.fixture
def opened_sessions(monkeypatch) -> list[str]:
    """The graph file of every session the engine opens, as it opens it."""
    real, opened = run_engine.create_session, []
    monkeypatch.setattr(run_engine, "create_session", lambda source, *args, **kwargs:
                        opened.append(str(source)) or real(source, *args, **kwargs))
    return opened


@pytest.mark.parametrize("first", ["at the content", "elsewhere"])
def test_a_problem_from_the_content_takes_the_content_target_from_its_first_evaluation_there(
        models_dir, vgg16_layers, opened_sessions, first):
    # From the content, the features the first evaluation computes there are the content
    # target: the content graph never runs. First evaluated elsewhere (a resumed run, a later
    # scale, a caller's own x), the content graph computes it. Either way every evaluation
    # equals the float64 reference, whose target comes from the content image.
    cfg = tiny_config(init="content")
    problem = StyleTransfer(cfg, models_dir=models_dir, provider="cpu", threads=2).prepare(CONTENT, STYLE)
    x0 = problem.initial_image()
    moved = x0 + np.random.default_rng(0).normal(0, 8, x0.shape)
    content_target, grams = ref.targets(vgg16_layers, problem.content[0], problem.styles[0][0],
                                        cfg.content_layer, cfg.style_layers)
    content_terms = []
    for x in ([x0, moved] if first == "at the content" else [moved, x0]):
        loss, grad = problem.loss_and_grad(x)
        terms, expected_grad = ref.loss_and_grad(vgg16_layers, x[0], content_target, grams, cfg.content_weight,
                                                 cfg.style_weights, cfg.tv_weight, cfg.content_layer,
                                                 cfg.style_layers)
        assert loss == pytest.approx(terms["loss"], rel=LOSS_RTOL)
        assert ref.relative_l2(grad[0], expected_grad) <= GRAD_REL_L2
        # At the content, a target from the (direct) content graph leaves float32 rounding of the
        # (Winograd) loss graph's features: a content term far below the loss's tolerance, not 0.
        assert problem.terms(x)["content"] == pytest.approx(terms["content"], rel=LOSS_RTOL,
                                                            abs=LOSS_RTOL * terms["loss"])
        content_terms.append(terms["content"])
    assert max(content_terms) > 1.0   # the moved point is far enough from the content to test that term
    ran_content_graph = any(path.endswith("-content.onnx") for path in opened_sessions)
    assert ran_content_graph == (first == "elsewhere")


def test_a_run_from_the_content_never_runs_the_content_graph(tmp_path, models_dir, opened_sessions):
    # L-BFGS-B's first evaluation is at the start image itself, so the content target comes from it.
    for mode in ("continuous", "seed"):
        engine_for(models_dir, init="content", optimizer_mode=mode, iterations=2).run(
            CONTENT, STYLE, tmp_path / f"{mode}.png")
    assert sorted(path.rsplit("-", 1)[-1] for path in opened_sessions) == ["loss.onnx", "loss.onnx", "style.onnx",
                                                                           "style.onnx"]


def test_problem_terms_reuse_an_evaluated_point_and_run_once_for_a_new_one(models_dir, ort_runs):
    problem = engine_for(models_dir).prepare(CONTENT, STYLE)
    x = problem.initial_image()
    problem.loss_and_grad(x)
    assert len(ort_runs) == 1
    first = problem.terms(x.copy())
    assert len(ort_runs) == 1, "terms re-ran the graph for a point just evaluated"
    other = x + 1.0
    fresh = problem.terms(other)
    assert len(ort_runs) == 2
    assert fresh["loss"] != first["loss"]
    assert problem.evaluations == 1   # terms are not evaluations of the optimisation


def test_one_onnx_runtime_run_per_evaluation(tmp_path, models_dir, ort_runs, monkeypatch):
    evaluated_points: list[np.ndarray] = []
    terms_calls: list[tuple[bool, int]] = []   # (point already evaluated?, runs it made)
    real_loss_and_grad, real_terms = run_engine.Problem.loss_and_grad, run_engine.Problem.terms

    def loss_and_grad(self, x):
        evaluated_points.append(np.array(x, copy=True))
        return real_loss_and_grad(self, x)

    def terms(self, x):
        seen = any(np.array_equal(p, x) for p in evaluated_points)
        before = len(ort_runs)
        out = real_terms(self, x)
        terms_calls.append((seen, len(ort_runs) - before))
        return out

    monkeypatch.setattr(run_engine.Problem, "loss_and_grad", loss_and_grad)
    monkeypatch.setattr(run_engine.Problem, "terms", terms)
    events = []
    engine_for(models_dir).run(CONTENT, STYLE, tmp_path / "out.png", callback=events.append)
    record = json.loads((tmp_path / "out.json").read_text())

    evaluations = [e for e in events if isinstance(e, Evaluated)]
    assert record["evaluations"] == len(evaluations) == len(evaluated_points)
    assert len(terms_calls) == TINY["iterations"]
    for seen, runs in terms_calls:
        assert runs == (0 if seen else 1)
    assert len(ort_runs) == record["evaluations"] + sum(runs for _, runs in terms_calls)
    assert len({id(session) for session in ort_runs}) == 1   # all on the one loss-gradient session


# ---------------------------------------------------------------- the loop


def test_the_engine_keeps_one_session_per_kind_and_the_targets_session_keeps_no_arena(models_dir, monkeypatch):
    # The targets' session stays open for the next run; without an arena its activations are given back.
    real, opened = run_engine.create_session, []
    monkeypatch.setattr(run_engine, "create_session", lambda source, *args, **kwargs:
                        opened.append((source, kwargs)) or real(source, *args, **kwargs))
    st = engine_for(models_dir)
    problem = st.prepare(CONTENT, STYLE)
    st.prepare(CONTENT, STYLE)
    assert sorted(str(source).rsplit("-", 1)[-1] for source, _ in opened) == ["content.onnx", "loss.onnx", "style.onnx"]
    assert {str(source).rsplit("-", 1)[-1]: kwargs["arena"] for source, kwargs in opened} == {
        "loss.onnx": True, "content.onnx": False, "style.onnx": False}
    assert problem.evaluator.session in st.engine._sessions.values()


def test_the_loss_session_opens_beside_the_targets_computation_and_its_errors_reach_the_caller(
        models_dir, monkeypatch):
    import threading

    from engine.errors import ProviderError

    real = run_engine.create_session
    opened = {}

    def recording(source, *args, **kwargs):
        kind = "loss" if str(source).endswith("-loss.onnx") else "other"
        opened[kind] = threading.current_thread() is threading.main_thread()
        return real(source, *args, **kwargs)

    monkeypatch.setattr(run_engine, "create_session", recording)
    engine_for(models_dir).prepare(CONTENT, STYLE)
    assert opened == {"loss": False, "other": True}

    def failing(source, *args, **kwargs):
        if str(source).endswith("-loss.onnx"):
            raise ProviderError("CUDA was requested but could not start")
        return real(source, *args, **kwargs)

    monkeypatch.setattr(run_engine, "create_session", failing)
    with pytest.raises(ProviderError, match="could not start"):
        engine_for(models_dir).prepare(CONTENT, STYLE)


def test_cuda_starts_from_two_threads_at_once_leave_stdout_as_it_was(monkeypatch):
    # prepare opens the loss session in a thread beside the targets': CUDA's start redirects
    # stdout (preload_dlls prints) and quiets ORT's logger, both process-wide.
    import sys
    import threading
    import time

    from engine.errors import ProviderError
    from engine.graph.builder import GraphBuilder
    from engine.runtime.sessions import CPU, CUDA, create_session

    def noisy_preload():
        print("missing libcudnn.so.9")
        time.sleep(0.05)

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "preload_dlls", noisy_preload, raising=False)
    b = GraphBuilder()
    b.output("y", b.op("Relu", b.input("x", [1])), [1])
    model = b.model("probe").SerializeToString()
    stdout, errors = sys.stdout, []

    def start():
        try:
            create_session(model, "cuda")
        except ProviderError as error:
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sys.stdout is stdout
    assert len(errors) == 4


def test_cpu_sessions_plan_no_memory_pattern(models_dir):
    # A memory pattern makes the CPU arena hold one block as large as all activations beside
    # the first run's chunks (benchmarks/results: 1.36 GiB peak at 512 px, 0.72 without).
    problem = engine_for(models_dir).prepare(CONTENT, STYLE)
    assert problem.evaluator.session.get_session_options().enable_mem_pattern is False


def test_loop_runs_iterations_of_fmin_l_bfgs_b_with_maxfun(tmp_path, models_dir, monkeypatch):
    calls = []
    real = optimize_module.fmin_l_bfgs_b

    def recording(func, x0, *args, **kwargs):
        calls.append(kwargs.get("maxfun"))
        return real(func, x0, *args, **kwargs)

    monkeypatch.setattr(optimize_module, "fmin_l_bfgs_b", recording)
    result = engine_for(models_dir, iterations=3, maxfun=5).run(CONTENT, STYLE)
    assert calls == [5, 5, 5]   # the seed: one fresh L-BFGS-B call per iteration
    assert [it.iteration for it in result.iterations] == [1, 2, 3]
    assert all(it.evaluations >= 1 for it in result.iterations)
    assert result.output is None and result.record is None


def test_loop_writes_snapshots_every_save_every_the_final_image_and_the_record(finished_run):
    folder, result, _ = finished_run
    assert sorted(p.name for p in folder.iterdir()) == ["cat.json", "cat.png", "cat_at_iteration_2.png"]
    assert [it.snapshot for it in result.iterations] == [None, folder / "cat_at_iteration_2.png", None]
    assert result.output == folder / "cat.png" and result.record == folder / "cat.json"
    with Image.open(folder / "cat.png") as final:
        assert final.size == (32, 21)   # the content's aspect at --size 32
        np.testing.assert_array_equal(np.asarray(final.convert("RGB")), result.image)
    with Image.open(folder / "cat_at_iteration_2.png") as snapshot:
        assert snapshot.size == (32, 21)


def test_snapshots_are_named_like_the_seeds_for_every_iteration_by_default(tmp_path, models_dir):
    result = engine_for(models_dir, iterations=2, maxfun=3).run(CONTENT, STYLE, tmp_path / "wave.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "wave.jpg", "wave.json", "wave_at_iteration_1.png", "wave_at_iteration_2.png"]
    assert [it.snapshot.name for it in result.iterations] == ["wave_at_iteration_1.png", "wave_at_iteration_2.png"]


def test_record_holds_config_model_checksum_provider_versions_and_iterations(finished_run):
    folder, result, _ = finished_run
    record = json.loads((folder / "cat.json").read_text())
    assert record["status"] == "finished"
    assert record["output"] == str(folder / "cat.png")
    assert record["config"] == tiny_config(save_every=2).to_dict()
    assert TransferConfig(**record["config"]) == tiny_config(save_every=2)
    manifest = json.loads(MANIFEST.read_text())
    assert record["model"]["architecture"] == "vgg16"
    assert record["model"]["weights_sha256"] == manifest["vgg16"]["weights_sha256"]
    assert Path(record["model"]["path"]).name == "vgg16.onnx"
    assert record["provider"] == "CPUExecutionProvider" == result.provider
    assert record["versions"]["onnxruntime"] == ort.__version__
    assert record["versions"]["numpy"] == np.__version__
    assert {"engine", "onnx", "scipy", "python"} <= set(record["versions"])
    iterations = record["iterations"]
    assert [it["iteration"] for it in iterations] == [1, 2, 3]
    for entry, done in zip(iterations, result.iterations):
        assert {"iteration", "loss", "content", "style", "tv", "evaluations", "seconds"} <= set(entry)
        assert entry["loss"] == pytest.approx(done.loss) and entry["evaluations"] == done.evaluations
        assert entry["loss"] == pytest.approx(entry["content"] + entry["style"] + entry["tv"], rel=1e-5)
        assert entry["seconds"] >= 0
    assert record["evaluations"] == sum(it["evaluations"] for it in iterations)
    assert not leftover_temp_files(folder)


def test_loss_decreases_from_first_to_last_iteration(finished_run):
    _, result, _ = finished_run
    losses = [it.loss for it in result.iterations]
    assert losses[-1] < losses[0]
    assert all(np.isfinite(losses))


def test_events_reach_the_callback_in_order(finished_run):
    _, result, events = finished_run
    assert isinstance(events[0], Prepared)
    assert (events[0].width, events[0].height, events[0].provider) == (32, 16, "CPUExecutionProvider")
    assert isinstance(events[-1], IterationDone)
    assert not any(isinstance(e, Prepared) for e in events[1:])
    evaluated = [e for e in events if isinstance(e, Evaluated)]
    assert [e.evaluation for e in evaluated] == list(range(1, len(evaluated) + 1))
    # Each IterationDone follows its own evaluations and counts them.
    since = 0
    for event in events[1:]:
        if isinstance(event, Evaluated):
            since += 1
        else:
            assert isinstance(event, IterationDone)
            assert since == event.evaluations >= 1
            since = 0
    assert [e for e in events if isinstance(e, IterationDone)] == result.iterations


def test_same_seed_gives_the_same_result_and_another_seed_another(models_dir):
    first = engine_for(models_dir, iterations=2, seed=5).run(CONTENT, STYLE)
    second = engine_for(models_dir, iterations=2, seed=5).run(CONTENT, STYLE)
    np.testing.assert_array_equal(first.image, second.image)
    assert [it.loss for it in first.iterations] == [it.loss for it in second.iterations]
    other = engine_for(models_dir, iterations=2, seed=6).run(CONTENT, STYLE)
    assert not np.array_equal(first.image, other.image)


def test_start_image_is_the_seeds_uniform_noise(models_dir):
    problem = engine_for(models_dir, seed=3).prepare(CONTENT, STYLE)
    x = problem.initial_image()
    assert x.shape == problem.shape
    assert -128.0 <= x.min() and x.max() <= 127.0
    assert x.std() == pytest.approx(255 / np.sqrt(12), rel=0.05)   # uniform over 255 values


def test_size_none_keeps_the_contents_exact_size(tmp_path, models_dir):
    # 37x23 is no multiple of 16: the engine works at one (for block5) and resizes back.
    rng = np.random.default_rng(0)
    content = tmp_path / "odd.png"
    Image.fromarray(rng.integers(0, 256, (23, 37, 3), dtype=np.uint8)).save(content)
    events = []
    result = engine_for(models_dir, size=None, iterations=1, maxfun=3).run(
        content, STYLE, tmp_path / "odd_out.png", callback=events.append)
    assert result.image.shape == (23, 37, 3)
    prepared = events[0]
    assert prepared.width % 16 == 0 and prepared.height % 16 == 0
    with Image.open(tmp_path / "odd_out.png") as out:
        assert out.size == (37, 23)
    with Image.open(tmp_path / "odd_out_at_iteration_1.png") as snapshot:
        assert snapshot.size == (37, 23)
    record = json.loads((tmp_path / "odd_out.json").read_text())
    assert record["output_size"] == [37, 23]
    assert [v % 16 for v in record["working_size"]] == [0, 0]


# ---------------------------------------------------------------- Ctrl-C


def interrupt_after_first_snapshot(events: list, nth: int):
    """A callback raising KeyboardInterrupt on the nth Evaluated event after the first snapshot."""
    state = {"snapshot": False, "count": 0}

    def callback(event):
        events.append(event)
        if isinstance(event, IterationDone) and event.snapshot:
            state["snapshot"] = True
        elif isinstance(event, Evaluated) and state["snapshot"]:
            state["count"] += 1
            if state["count"] == nth:
                raise KeyboardInterrupt
    return callback


def test_keyboard_interrupt_keeps_snapshots_and_writes_an_interrupted_record(tmp_path, models_dir):
    events = []
    output = tmp_path / "cat.png"
    with pytest.raises(KeyboardInterrupt):
        engine_for(models_dir).run(CONTENT, STYLE, output, callback=interrupt_after_first_snapshot(events, 2))
    assert (tmp_path / "cat_at_iteration_1.png").is_file()
    assert not (tmp_path / "cat_at_iteration_2.png").exists()
    assert not output.exists()
    record = json.loads((tmp_path / "cat.json").read_text())
    assert record["status"] == "interrupted"
    assert record["output"] is None
    assert [it["iteration"] for it in record["iterations"]] == [1]
    assert record["evaluations"] == len([e for e in events if isinstance(e, Evaluated)])
    assert not leftover_temp_files(tmp_path)
    with Image.open(tmp_path / "cat_at_iteration_1.png") as snapshot:
        snapshot.load()   # complete, readable


def test_cli_exits_130_on_ctrl_c_and_names_the_last_snapshot(tmp_path, models_dir, monkeypatch):
    real = run_engine.Problem.loss_and_grad
    calls = {"n": 0}

    def interrupted_mid_second_iteration(self, x):
        calls["n"] += 1
        if calls["n"] == 8:   # iteration 1 takes 4-5 evaluations at maxfun 3
            raise KeyboardInterrupt
        return real(self, x)

    monkeypatch.setattr(run_engine.Problem, "loss_and_grad", interrupted_mid_second_iteration)
    output = tmp_path / "cat.png"
    result = CliRunner().invoke(app, ["stylize", str(CONTENT), str(STYLE), "-o", str(output), "--size", "32",
                                      "--iterations", "3", "--maxfun", "3", "--threads", "2", "--provider", "cpu",
                                      "--models-dir", str(models_dir)])
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output
    assert "interrupted" in result.stderr
    assert "cat_at_iteration_1.png" in result.stderr
    assert not output.exists()
    assert json.loads((tmp_path / "cat.json").read_text())["status"] == "interrupted"


def test_cli_exits_130_when_the_run_is_interrupted_before_any_snapshot(tmp_path, models_dir, monkeypatch):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(StyleTransfer, "run", interrupted)
    result = CliRunner().invoke(app, ["stylize", str(CONTENT), str(STYLE), "-o", str(tmp_path / "x.png"),
                                      "--size", "32", "--models-dir", str(models_dir)])
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output
    assert "interrupted" in result.stderr

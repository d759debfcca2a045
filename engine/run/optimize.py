"""L-BFGS-B drivers: the seed's restart-per-iteration loop and one continuous run.

The seed's loss reaches 1e12-1e15; both drivers divide it (and its gradient) by
the first evaluation's loss so L-BFGS-B sees numbers near 1, and pass
``factr=0, pgtol=0`` so scipy never stops before the evaluation budget. A tolerance
is tested here, per iteration, not by scipy's factr: factr compares single steps and
divides by max(|f|, 1), which with f scaled to start at 1 measures against the first
loss, not the current one. Callers get the true terms from the problem.
"""
from __future__ import annotations

import time
from typing import Callable, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from ..config import OptimizerMode

# on_iteration(iteration (1-based), x, evaluations in that iteration, seconds)
OnIteration = Callable[[int, np.ndarray, int, float], None]


class Cancelled(Exception):
    """Raised out of L-BFGS-B before an evaluation once the run's cancel flag is set."""


def fmin_l_bfgs_b(*args, **kwargs):
    """scipy's ``fmin_l_bfgs_b``, imported at its first call, not with this module: importing
    scipy.optimize takes ~0.4 s, which ``Engine.prepare`` spends beside the targets instead."""
    from scipy.optimize import fmin_l_bfgs_b as lbfgsb

    return lbfgsb(*args, **kwargs)


def loss_scale(first_loss: float) -> float:
    """What every loss (and gradient) of one optimize call is multiplied by: 1 / its first loss."""
    return 1.0 / max(abs(first_loss), 1e-30)


class Objective(Protocol):
    evaluations: int

    def loss_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]: ...


def optimize(problem: Objective, x0: np.ndarray, iterations: int, maxfun: int, mode: OptimizerMode,
             on_iteration: OnIteration, tol: float | None = None,
             bounds: list[tuple[float, float]] | None = None,
             on_evaluation: Callable[[float], None] = lambda loss: None, blas_threads: int | None = 1,
             scale: float | None = None, cancelled: Callable[[], bool] = lambda: False) -> np.ndarray:
    """Minimise ``problem`` from ``x0`` for ``iterations`` x ``maxfun`` evaluations; return x.

    ``blas_threads``: the BLAS threads L-BFGS-B's vector operations get (None: as set).
    ``scale``: the loss scale (None: ``loss_scale`` of the first evaluation; a resumed run
    passes the one its first part used). ``cancelled`` is asked before each evaluation;
    when it says True, ``Cancelled`` is raised.
    """
    scales: list[float] = [] if scale is None else [scale]
    stopper = _Tolerance(tol)

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        if cancelled():
            raise Cancelled
        loss, grad = problem.loss_and_grad(x)
        on_evaluation(loss)
        if not scales:
            scales.append(loss_scale(loss))
        stopper.evaluated(loss * scales[0])
        return loss * scales[0], grad.ravel() * scales[0]

    options = dict(factr=0.0, pgtol=0.0, bounds=bounds)
    x = np.asarray(x0, np.float64).ravel()
    driver = _seed if mode is OptimizerMode.SEED else _continuous
    # L-BFGS-B's vector BLAS calls on all cores fight ONNX Runtime's threads, which are still
    # spinning after each run: on one thread they cost ~3x less time (benchmarks/results).
    with threadpool_limits(blas_threads, user_api="blas"):
        return driver(problem, objective, x, iterations, maxfun, options, on_iteration, stopper)


class _Tolerance:
    """Says when to stop: once an iteration lowered the (scaled) loss by at most ``tol``
    times the loss it started from; never when ``tol`` is None or 0.

    An iteration starts from the last iteration's end point (the first from the first
    evaluation) and ends at the point the driver reports; L-BFGS-B evaluates an accepted
    point last before it calls back, so in the continuous driver that is the last
    evaluated loss."""

    def __init__(self, tol: float | None):
        self.tol = tol
        self.start: float | None = None
        self.last: float | None = None
        self.stopped = False

    def evaluated(self, loss: float) -> None:
        if self.start is None:
            self.start = loss
        self.last = loss

    def iteration_done(self, loss: float | None = None) -> bool:
        """An iteration ended at ``loss`` (default: the last evaluated): whether to stop now."""
        loss = self.last if loss is None else loss
        if not self.tol or self.start is None or loss is None:
            return False
        self.stopped = self.start - loss <= self.tol * abs(self.start)
        self.start = loss
        return self.stopped

    def done(self, info: dict) -> bool:
        """Whether to stop: the tolerance was reached, or scipy found nothing left to reduce."""
        return bool(self.tol) and (self.stopped or info["warnflag"] == 0)


def _seed(problem, objective, x, iterations, maxfun, options, on_iteration, stopper):
    # As the seed: a fresh L-BFGS-B (its curvature history lost) for each iteration.
    for i in range(1, iterations + 1):
        tick, before = time.perf_counter(), problem.evaluations
        x, loss, info = fmin_l_bfgs_b(objective, x, maxfun=maxfun, **options)
        on_iteration(i, x, problem.evaluations - before, time.perf_counter() - tick)
        stopper.iteration_done(loss)
        if stopper.done(info):
            break
    return x


def _continuous(problem, objective, x, iterations, maxfun, options, on_iteration, stopper):
    # One L-BFGS-B run; an "iteration" is each maxfun evaluations, reported at the
    # first accepted iterate past that mark; the last one after the run, with the
    # final x and every evaluation left (scipy may go past its maxfun).
    start = problem.evaluations
    budget = iterations * maxfun
    state = {"done": 0, "tick": time.perf_counter(), "mark": start}

    def finish_iteration(xk: np.ndarray) -> None:
        state["done"] += 1
        now = time.perf_counter()
        on_iteration(state["done"], xk, problem.evaluations - state["mark"], now - state["tick"])
        state["tick"], state["mark"] = now, problem.evaluations

    def report(xk: np.ndarray) -> None:
        reported = state["done"]
        while state["done"] < iterations - 1 and problem.evaluations - start >= (state["done"] + 1) * maxfun:
            finish_iteration(xk)
        # Once per callback: a line search that overran past two marks reports two iterations
        # here, the second without evaluations of its own; the drop is measured over both.
        if state["done"] > reported and stopper.iteration_done():
            raise StopIteration

    converged = False
    while problem.evaluations - start < budget and not converged:
        before = problem.evaluations
        x, _, info = fmin_l_bfgs_b(objective, x, maxfun=budget - (before - start), maxiter=10**9,
                                   callback=report, **options)
        converged = stopper.done(info)
        # A line search that fails on float32 noise ends a run early: go on from x.
        if problem.evaluations == before:
            break
    while state["done"] < iterations:  # the last iteration, or the one a stop by tol cut short
        if converged and state["done"] and problem.evaluations == state["mark"]:
            break  # stopped right at a mark: that iteration is reported already
        finish_iteration(x)
        if converged:
            break
    return x

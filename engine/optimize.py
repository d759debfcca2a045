"""L-BFGS-B drivers: the seed's restart-per-iteration loop and one continuous run.

The seed's loss reaches 1e12-1e15; both drivers divide it (and its gradient) by
the first evaluation's loss so L-BFGS-B sees numbers near 1, and pass
``factr=0, pgtol=0`` so scipy never stops before the evaluation budget unless a
tolerance is asked for. Callers get the true terms from the problem.
"""
from __future__ import annotations

import time
from typing import Callable, Protocol

import numpy as np
from scipy.optimize import fmin_l_bfgs_b

from .config import OptimizerMode

# on_iteration(iteration (1-based), x, evaluations in that iteration, seconds)
OnIteration = Callable[[int, np.ndarray, int, float], None]


class Objective(Protocol):
    evaluations: int

    def loss_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]: ...


def optimize(problem: Objective, x0: np.ndarray, iterations: int, maxfun: int, mode: OptimizerMode,
             on_iteration: OnIteration, tol: float | None = None,
             bounds: list[tuple[float, float]] | None = None,
             on_evaluation: Callable[[float], None] = lambda loss: None) -> np.ndarray:
    """Minimise ``problem`` from ``x0`` for ``iterations`` x ``maxfun`` evaluations; return x."""
    scale: list[float] = []

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        loss, grad = problem.loss_and_grad(x)
        on_evaluation(loss)
        if not scale:
            scale.append(1.0 / max(abs(loss), 1e-30))
        return loss * scale[0], grad.ravel() * scale[0]

    options = dict(factr=tol / np.finfo(float).eps if tol else 0.0, pgtol=0.0, bounds=bounds)
    x = np.asarray(x0, np.float64).ravel()
    if mode is OptimizerMode.SEED:
        return _seed(problem, objective, x, iterations, maxfun, options, on_iteration, tol)
    return _continuous(problem, objective, x, iterations, maxfun, options, on_iteration, tol)


def _converged(info: dict) -> bool:
    return info["warnflag"] == 0


def _seed(problem, objective, x, iterations, maxfun, options, on_iteration, tol):
    # As the seed: a fresh L-BFGS-B (its curvature history lost) for each iteration.
    for i in range(1, iterations + 1):
        tick, before = time.perf_counter(), problem.evaluations
        x, _, info = fmin_l_bfgs_b(objective, x, maxfun=maxfun, **options)
        on_iteration(i, x, problem.evaluations - before, time.perf_counter() - tick)
        if tol and _converged(info):
            break
    return x


def _continuous(problem, objective, x, iterations, maxfun, options, on_iteration, tol):
    # One L-BFGS-B run; an "iteration" is each maxfun evaluations, reported at the
    # first accepted iterate past that mark.
    start = problem.evaluations
    budget = iterations * maxfun
    state = {"done": 0, "tick": time.perf_counter(), "mark": start}

    def finish_iteration(xk: np.ndarray) -> None:
        state["done"] += 1
        now = time.perf_counter()
        on_iteration(state["done"], xk, problem.evaluations - state["mark"], now - state["tick"])
        state["tick"], state["mark"] = now, problem.evaluations

    def report(xk: np.ndarray) -> None:
        while state["done"] < iterations and problem.evaluations - start >= (state["done"] + 1) * maxfun:
            finish_iteration(xk)

    converged = False
    while problem.evaluations - start < budget and not converged:
        before = problem.evaluations
        x, _, info = fmin_l_bfgs_b(objective, x, maxfun=budget - (before - start), maxiter=10**9,
                                   callback=report, **options)
        converged = bool(tol) and _converged(info)
        # A line search that fails on float32 noise ends a run early: go on from x.
        if problem.evaluations == before:
            break
    while state["done"] < iterations:  # the last mark, or a stop by tol
        finish_iteration(x)
        if converged:
            break
    return x

"""Many jobs: JOBS files and folders into validated jobs, the driver and its runners.

    from engine import Engine
    from engine.batch import LocalRunner, read_jobs, run_batch
    summary = run_batch(read_jobs("jobs.csv", "out"), "out", LocalRunner(Engine()))

``engine.batch.ray_runner.RayRunner`` runs the same jobs on a Ray cluster (the ray extra).
"""
from .jobs import Job, cross_jobs, read_jobs
from .runner import (BatchEnded, BatchStarted, BatchSummary, JobEnded, JobProgress, JobStarted, LocalRunner,
                     run_batch)

__all__ = ["BatchEnded", "BatchStarted", "BatchSummary", "Job", "JobEnded", "JobProgress", "JobStarted",
           "LocalRunner", "cross_jobs", "read_jobs", "run_batch"]

"""The measuring harness behind `nst bench` and its committed results (benchmarks/results)."""

"""Measurement: metrics, FLOPs, latency, evaluation, the stage-1/stage-2 caches that let a sweep
reuse one forward, the sweep and the speed benchmark.

May import: core, weights, data. Never trains: training imports measurement, not the reverse.
"""

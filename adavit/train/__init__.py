"""Training: the fine-tuning recipe (linear probe, then every block with random settings) and the
training-time benchmark.

May import: core, weights, data, measure (metrics and evaluation during and after training).
"""

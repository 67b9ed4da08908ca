"""The metrics registry: each metric one function over per-image statistics and one registration.

`registry` holds the machinery (statistics, metrics, scores, the best epoch); each module below registers
statistics and metrics when imported, and every command takes its columns from `registry.METRICS`.
Importing this package registers them all, in this order (the order of every table's columns).
"""

from poc59.metrics import (
    boundary,  # noqa: F401  (registers Boundary IoU)
    confusion,  # noqa: F401  (registers the confusion matrix and its metrics)
)

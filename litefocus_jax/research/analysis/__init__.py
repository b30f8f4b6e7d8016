"""Attention-pattern analysis (see `capture` for the method): capture, measure, report."""

from litefocus_jax.research.analysis.capture import (
    MATPLOTLIB_HINT,
    PROBS_NAME,
    RANDOM_WEIGHTS,
    RANDOM_WEIGHTS_NOTE,
    AttentionCapture,
    AttentionSite,
    capture_attention,
    choose_sites,
    key_grid,
    row_mass,
    self_attention_sites,
    spread_queries,
)
from litefocus_jax.research.analysis.report import (
    aggregate,
    format_table,
    require_matplotlib,
    save_heatmaps,
    summarize,
    write_report,
)

__all__ = [
    "AttentionCapture",
    "AttentionSite",
    "MATPLOTLIB_HINT",
    "PROBS_NAME",
    "RANDOM_WEIGHTS",
    "RANDOM_WEIGHTS_NOTE",
    "aggregate",
    "capture_attention",
    "choose_sites",
    "format_table",
    "key_grid",
    "require_matplotlib",
    "row_mass",
    "save_heatmaps",
    "self_attention_sites",
    "spread_queries",
    "summarize",
    "write_report",
]

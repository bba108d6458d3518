"""Plots and the self-contained HTML memorization report."""

from monai_memorization.report.html import write_html_report
from monai_memorization.report.plots import (
    plot_correlation_histogram,
    plot_pair_montage,
    plot_similarity_histogram,
)

__all__ = ["plot_correlation_histogram", "plot_pair_montage", "plot_similarity_histogram", "write_html_report"]

"""The report layer: writes files and MLflow records from a scan's results and computes nothing.

- :mod:`~monai_memorization.report.writer`: the scan report folder (JSON, CSV, PNG, HTML) and its MLflow run.
- :mod:`~monai_memorization.report.html`: the self-contained HTML scan report.
- :mod:`~monai_memorization.report.audit_report`: the audit's HTML page.
- :mod:`~monai_memorization.report.plots`: the figures.
"""

from monai_memorization.report.html import write_html_report
from monai_memorization.report.plots import (
    plot_correlation_histogram,
    plot_pair_montage,
    plot_similarity_histogram,
)
from monai_memorization.report.writer import check_out_dir, log_scan_to_mlflow, write_scan_report

__all__ = [
    "plot_correlation_histogram", "plot_pair_montage", "plot_similarity_histogram", "write_html_report", "check_out_dir",
    "write_scan_report", "log_scan_to_mlflow",
]

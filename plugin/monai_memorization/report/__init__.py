# Copyright (c) monai-memorization contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
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

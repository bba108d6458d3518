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
"""The two audits: of generators trained here (``audit --modality xr|ct|mr``) and of a bundle already trained
(``audit --bundle DIR``).

* :mod:`.run` -- the audit that trains (below); :mod:`.steps` its steps, :mod:`.evaluate` one generator's samples
  scored, :mod:`.verdict` the per-configuration record and the headline both audits print, :mod:`.presets` its sizes;
* :mod:`.bundle_audit` -- the audit of a trained bundle as it is (model-zoo, MAISI, this project's ``ldm_*``), over
  :mod:`.bundle_config` (open the bundle: stage files, overrides, its ``scripts`` package), :mod:`.bundle_images` (its
  training and held-out images through its own preprocessing) and :mod:`.bundle_sampler` (its networks rebuilt into a
  seeded in-memory sampler).

The audit that trains reproduces the study's central finding in miniature, on the embedded phantoms, and gives a
verdict only where the evidence carries one:

1. **data** -- a phantom data set (training, validation and held-out subjects), or your datalist;
2. **detector** -- the copy detector, trained on the training images with the default preset
   (:mod:`monai_memorization.detection.presets`, sized by optimizer steps);
3. **generators** -- the LDM bundle trained, through ``monai.bundle`` exactly as a user runs it, in
   each configuration of the preset: a *memorization-prone* one (few images, no augmentation, long
   training) and a *mitigated* one (more images, augmentation, the same optimizer steps), each with
   the memorization-check overlay that records the copy rate while the model trains;
4. **samples, quality, scan** -- per configuration: seeded DDIM samples; a pixel-space check that the
   generator has learned its data (:mod:`monai_memorization.detection.evidence`), FID and MS-SSIM;
   the scan (threshold from the held-out images); each flagged copy checked in pixel space;
5. **positive control** -- planted exact and transformed copies of training images, scanned the
   same way: "no copies" means something only if the detector finds these.

A sample counts as a copy when the detector flags it *and* the pixel check confirms it (it is closer
to its training image than any held-out patient is to any training image); the detector's own
count is reported beside it, and the headline says when most of its flags are not confirmed.
The headline gives a verdict per configuration only when its generator converged and the detector
found every planted kind; otherwise it says why the copy rate is no evidence. Exit codes of the
CLI: 0 -- every verdict is backed by evidence; 3 -- inconclusive (a generator did not converge, the
detector missed planted kinds, or a smoke run); 2 -- bad input.

Everything goes under one folder (``audit_<modality>``) with one MLflow store: one parent run per
audit, with the detector, the bundle stages and the scans as its children. Only aggregate figures
go to the parent run.
"""

from __future__ import annotations

from monai_memorization.audit.presets import AUDIT_PRESETS
from monai_memorization.audit.run import AuditResult, run_audit
from monai_memorization.audit.steps import bundle_dir
from monai_memorization.audit.verdict import EXIT_INCONCLUSIVE

__all__ = ["run_audit", "AuditResult", "bundle_dir", "AUDIT_PRESETS", "EXIT_INCONCLUSIVE"]

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
"""Exceptions whose message is the one line a user sees."""


class MemorizationError(Exception):
    """Base class: the message is a single line that names the file and the problem."""


class DataValidationError(MemorizationError, ValueError):
    """Bad input data: missing, corrupt, wrongly shaped or otherwise unusable."""


class DetectorError(MemorizationError, ValueError):
    """A detector checkpoint or embedding that cannot be used."""

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
"""``python -m monai_memorization.label.app APP_DIR [--demo STUDIES]``: write the MONAI Label app (and demo images)."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monai_memorization.label.app",
        description="Write the memorization MONAI Label app to APP_DIR (serve it with monailabel start_server --app APP_DIR).",
    )
    parser.add_argument("app_dir", help="folder for the app (MONAI Label also writes its logs there)")
    parser.add_argument("--demo", metavar="STUDIES", default=None,
                        help="also make the embedded-phantom reference (detector and datalist in STUDIES/.memorization) "
                             "and fill STUDIES with images to review: an exact copy of a training phantom and novel images")
    args = parser.parse_args(argv)
    from monai_memorization.label.app import write_app

    app = write_app(args.app_dir)
    print(f"app: {app}")
    if args.demo:
        from monai_memorization.label.appconf import write_demo

        print(json.dumps(write_demo(args.demo), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

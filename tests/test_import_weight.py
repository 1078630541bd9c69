"""What a `muxio serve` process imports: no `dataclasses` on the serving path.

docs/architecture.md says so; this keeps it true (asyncio brings `typing`
itself, so that one is not muxio's to avoid).
"""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import MUXIO_PATH as SRC


def test_serving_path_does_not_import_dataclasses() -> None:
    code = (
        "import sys\n"
        "import muxio, muxio.cli, muxio.runner, muxio.serving, muxio.supervisor\n"
        "import muxio.services.upper, muxio.services.upper_streams, muxio.services.work\n"
        "print('dataclasses' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
        env=dict(os.environ, PYTHONPATH=SRC),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"

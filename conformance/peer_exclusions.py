"""Peer-suite tests muxio's loop is allowed not to pass, each with the reason why.

Keys are `suite::pytest node id` (e.g. ``"anyio::tests/test_x.py::test_y[asyncio]"``) or
``fnmatch`` patterns over them; values say why the difference is accepted.  An entry
without a reason is refused.  Excluded tests are deselected on muxio's side only.
"""

from __future__ import annotations

EXCLUSIONS: dict[str, str] = {}

"""Tests the chosen loop is allowed not to pass, each with the reason why.

Keys are test ids as printed by ``asyncio_suite.py`` (module prefix without
``test.test_asyncio.``) or ``fnmatch`` patterns over them, e.g.
``"test_events.SelectEventLoopTestsOnLoop.test_read_pty_output"`` or
``"test_unix_events.*"``. Values say why the difference is accepted; an entry
without a reason is refused. Excluded tests are not run on the chosen loop (an
exclusion may be for a test that hangs), only on the ``--against`` loop.
"""

from __future__ import annotations

EXCLUSIONS: dict[str, str] = {}

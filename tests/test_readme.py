"""The README's settings table is the settings module's, row for row."""

from __future__ import annotations

import re
import subprocess
import sys

from ticktape.config import REPO_ROOT


def test_settings_table_matches_the_settings_module():
    readme = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"<!-- settings-table:start -->\n(.*?)<!-- settings-table:end -->", readme, re.S)
    assert block, "README lost its settings-table markers"
    table = subprocess.run(
        [sys.executable, "-m", "ticktape.cli", "config", "--table"], capture_output=True, text=True, check=True
    ).stdout
    assert block.group(1) == table, "README settings table is stale: paste `ticktape config --table`"

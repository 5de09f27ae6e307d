"""docs/configuration.md is generated from the config model; it must not fall behind it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_configuration_reference_matches_the_config_model():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_config_doc.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + "\nrun: python tools/gen_config_doc.py"


def test_every_field_of_the_core_sections_is_explained():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for section in ("## `models.N`", "## `router`\n", "## `controller`", "## `ray`", "## `autoscaler`\n"):
        part = doc.split(section, 1)[1].split("\n## ", 1)[0]
        unexplained = [row.split("|")[1].strip() for row in part.splitlines() if row.startswith("| `") and row.endswith("|  |")]
        assert not unexplained, f"{section.strip()}: no #: comment for {unexplained}"

"""The README's commands run as printed on a fresh clone: every input file they name is in the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)
    return [line for block in blocks for line in block.splitlines()]


def test_every_shipped_file_a_readme_command_reads_exists() -> None:
    named = {
        token
        for line in readme_commands()
        for token in re.findall(r"[\w./=-]+\.(?:json|yaml|py|sh|jsonl)\b", line.split("#")[0])
    }
    paths = sorted({token.split("=", 1)[-1] for token in named})
    assert len(paths) > 3, "the README names almost no file: the pattern above is out of date"
    missing = [path for path in paths if "/" in path and not (ROOT / path).exists()]
    assert not missing, f"README commands read files that a fresh clone does not have: {missing}"

"""Print the README's set-up commands, one per line, exactly as the README shows them.

They are the shell lines of the fenced ```sh blocks in the section headed
"## Set-up: two commands". .ci/run runs what this prints, verbatim, in a fresh venv, and
tests/test_docs.py checks the section through the same function, so the README is what CI
proves. Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

HEADING = "## Set-up: two commands"


def setup_commands(readme: str) -> list[str]:
    """The command lines of the ```sh blocks under HEADING (up to the next ## heading)."""
    lines = readme.splitlines()
    if HEADING not in lines:
        raise ValueError(f"no {HEADING!r} section")
    commands: list[str] = []
    fence: str | None = None
    for line in lines[lines.index(HEADING) + 1 :]:
        if fence is None and line.startswith("## "):
            break
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
        elif fence == "sh" and line.strip():
            commands.append(line)
    return commands


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "README.md")
    try:
        commands = setup_commands(path.read_text(encoding="utf-8"))
    except ValueError as e:
        print(f"{path}: {e}", file=sys.stderr)
        return 1
    if len(commands) != 2:
        print(f"{path}: expected two commands under {HEADING!r}, found {commands}",
              file=sys.stderr)  # fmt: skip
        return 1
    print("\n".join(commands))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

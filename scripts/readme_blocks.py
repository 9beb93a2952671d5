"""README.md's code blocks, for checking that every command on that page runs as written.

`python scripts/readme_blocks.py LANG [N]` prints the N-th block (default: all, separated by NUL) of language
LANG (bash, python); `... count LANG` how many there are; `... commands N` the N-th bash block's commands,
one a line; `commands(block)` splits a shell block into its commands (continuations joined,
comments dropped). Used by tests/test_readme.py and scripts/check-readme.sh.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(lang: str, text: str | None = None) -> list[str]:
    """The code blocks of README.md (or `text`) fenced as ```LANG, in page order."""
    text = README.read_text(encoding="utf-8") if text is None else text
    return [m.group(2) for m in FENCE.finditer(text) if m.group(1) == lang]


def commands(block: str) -> list[str]:
    """The shell commands of a bash block, one string each: continuations joined, comments and here-docs dropped."""
    out, lines = [], iter(block.replace("\\\n", " ").splitlines())
    for line in lines:
        if "<<'" in line:  # a here-document: skip to its end marker
            end = line.split("<<'")[1].split("'")[0]
            for body in lines:
                if body.strip() == end:
                    break
            continue
        words = shlex.split(line, comments=True)
        if words:
            out.append(shlex.join(words))
    return out


if __name__ == "__main__":
    if sys.argv[1] == "count":
        print(len(blocks(sys.argv[2])))
        raise SystemExit(0)
    if sys.argv[1] == "commands":
        print("\n".join(commands(blocks("bash")[int(sys.argv[2])])))
        raise SystemExit(0)
    found = blocks(sys.argv[1])
    chosen = found if len(sys.argv) < 3 else [found[int(sys.argv[2])]]
    sys.stdout.write("\0".join(chosen))

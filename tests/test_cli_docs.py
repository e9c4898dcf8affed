"""The documentation stays in step with the code: docs/cli.md is what `make docs` writes
from the commands' --help, and every relative link in README.md and docs/ resolves."""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI_DOCS = REPO / "docs" / "cli.md"


def _generate_cli_docs(output: Path) -> str:
    # The same command as `make docs`. `-m typer` with the repository as working
    # directory documents this checkout's embedrag/, whichever tree is installed.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("EMBEDRAG_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "-m", "typer", "embedrag.cli", "utils", "docs", "--name", "embedrag",
         "--output", str(output)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return output.read_text(encoding="utf-8")


def test_cli_reference_is_up_to_date(tmp_path):
    generated = _generate_cli_docs(tmp_path / "cli.md")
    committed = CLI_DOCS.read_text(encoding="utf-8") if CLI_DOCS.exists() else ""
    diff = "".join(list(difflib.unified_diff(
        committed.splitlines(keepends=True), generated.splitlines(keepends=True),
        "docs/cli.md (committed)", "docs/cli.md (from --help)"))[:60])
    assert generated == committed, (
        "docs/cli.md is out of date with the commands' --help: run `make docs` and commit "
        f"docs/cli.md.\n{diff}")


_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
_INLINE_CODE = re.compile(r"`[^`]*`")


def _prose_lines(path: Path):
    """(line number, text) outside fenced code blocks."""
    in_code = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE.match(line):
            in_code = not in_code
            continue
        if not in_code:
            yield number, line


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens,
    -1, -2 ... for repeats."""
    seen: dict[str, int] = {}
    anchors = set()
    for _, line in _prose_lines(path):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def test_relative_links_resolve():
    broken = []
    files = _markdown_files()
    assert len(files) > 10, files
    for path in files:
        for number, line in _prose_lines(path):
            # A link's text may be inline code; code spans elsewhere hold no links.
            for match in _LINK.finditer(line):
                target = match.group(1) or match.group(2)
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):   # https:, mailto: ...
                    continue
                file_part, _, anchor = target.partition("#")
                resolved = (path.parent / file_part).resolve() if file_part else path
                where = f"{path.relative_to(REPO)}:{number}: {target}"
                if not resolved.exists():
                    broken.append(f"{where} (no such file)")
                elif REPO not in resolved.parents and resolved != REPO:
                    broken.append(f"{where} (outside the repository)")
                elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                    broken.append(f"{where} (no heading #{anchor})")
            if _INLINE_CODE.sub("", line).count("](") != len(_LINK.findall(_INLINE_CODE.sub("", line))):
                broken.append(f"{path.relative_to(REPO)}:{number}: a link this test cannot parse")
    assert not broken, "broken links:\n" + "\n".join(broken)

"""The README, CONTRIBUTING and docs/ pages: every shell block is valid bash, every
`python -m lib_layerdiffuse` command in them parses with the real command line, every Python
block compiles, every relative link points at a file, and the commands that need no model run."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lib_layerdiffuse.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def blocks(language: str) -> list[tuple[str, str]]:
    return [(f"{page.relative_to(ROOT)}", body) for page in PAGES
            for lang, body in FENCE.findall(page.read_text(encoding="utf-8")) if lang == language]


def commands(body: str) -> list[str]:
    """The command lines of a shell block, continuation lines joined."""
    return [line for line in body.replace("\\\n", " ").splitlines() if line.strip() and not line.lstrip().startswith("#")]


def cli_arguments() -> list[tuple[str, list[str]]]:
    found = []
    for where, body in blocks("bash"):
        for line in commands(body):
            for part in re.split(r"&&|;", line):
                words = shlex.split(part, comments=True)
                if "lib_layerdiffuse" in words and words[words.index("lib_layerdiffuse") - 1] == "-m":
                    found.append((where, words[words.index("lib_layerdiffuse") + 1:]))
    return found


def test_the_pages_hold_commands_to_check():
    assert len(blocks("bash")) >= 10 and len(cli_arguments()) >= 20


@pytest.mark.parametrize("where, body", blocks("bash"), ids=lambda v: v if isinstance(v, str) and v.endswith(".md") else "")
def test_shell_blocks_are_valid_bash(where, body):
    result = subprocess.run(["bash", "-n"], input=body, capture_output=True, text=True)
    assert result.returncode == 0, f"{where}: {result.stderr}"


def test_every_cli_command_parses():
    parser = build_parser()
    problems = []
    for where, args in cli_arguments():
        try:
            parser.parse_args(args)
        except SystemExit:
            problems.append(f"{where}: python -m lib_layerdiffuse {' '.join(args)}")
    assert not problems, "commands that do not parse:\n" + "\n".join(problems)


def test_python_blocks_compile():
    for where, body in blocks("python"):
        compile(body, where, "exec")


def test_relative_links_point_at_files():
    missing = []
    for page in PAGES:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                missing.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not missing, "\n".join(missing)


def test_the_readme_fits_on_a_few_screens():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300


def test_the_status_command_of_the_readme_runs_as_written(tmp_path):
    """`status` needs no model: it runs and lists the methods and files."""
    assert any(args == ["status"] for _, args in cli_arguments())
    result = subprocess.run([sys.executable, "-m", "lib_layerdiffuse", "status"], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "FG_ONLY_ATTN" in result.stdout and "layer_xl_transparent_attn.safetensors" in result.stdout

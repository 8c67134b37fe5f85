"""The README's commands are real: CI runs the Quickstart's test command, and every
``flobc`` command it shows is accepted by the command line."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from flobc.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CI = ROOT / ".ci" / "run"


def code_blocks(markdown: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"```[a-z]*\n(.*?)```", markdown, re.S)]


def quickstart_commands() -> list[str]:
    section = README.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    return code_blocks(section)


def shell_tokens(line: str) -> list[str]:
    """Words and control operators of a shell line (``&``, ``>``, ``;`` ... stand alone)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.wordchars += ":$[]{}"
    return list(lexer)


def steps(command: str) -> list[list[str]]:
    """A ``a && b && c`` one-liner as a list of argument vectors."""
    return [shlex.split(part) for part in command.split("&&")]


def ci_commands() -> list[list[str]]:
    """Every simple command of .ci/run, with shell variables left unexpanded."""
    commands = []
    for line in CI.read_text().splitlines():
        command: list[str] = []
        for token in shell_tokens(line):
            if set(token) <= set("();<>|&"):
                if command:
                    commands.append(command)
                command = []
            else:
                command.append(token)
        if command:
            commands.append(command)
    return commands


def test_quickstart_has_exactly_setup_and_test_commands():
    setup, test = quickstart_commands()
    assert "\n" not in setup and "\n" not in test
    assert steps(setup) == [["python3", "-m", "venv", ".venv"],
                            [".venv/bin/pip", "install", "-e", "."],
                            [".venv/bin/flobc", "cluster", "up", "--rounds", "20"]]
    assert steps(test)[0] == ["python3", "-m", "venv", ".venv"]
    assert steps(test)[1] == [".venv/bin/pip", "install", "-e", ".[test]"]
    assert steps(test)[-1][:3] == [".venv/bin/python", "-m", "pytest"]


def test_ci_runs_the_readme_test_command_in_a_fresh_venv():
    readme_steps = steps(quickstart_commands()[1])
    commands = ci_commands()
    venvs = [c[3] for c in commands if c[:3] == ["python3", "-m", "venv"]]
    assert len(venvs) == 1, "CI must create exactly one virtualenv"
    venv = venvs[0]
    assert not venv.startswith(".venv"), "CI must not reuse the development .venv"
    for step in readme_steps[1:]:
        program = step[0].removeprefix(".venv/")
        wanted = [f"{venv}/{program}", *step[1:]]
        assert any(c[:len(wanted)] == wanted for c in commands), (
            f"CI does not run {shlex.join(step)} (as {shlex.join(wanted)})")
    assert [f"{venv}/bin/ruff", "check", "."] in commands


def test_ci_script_is_strict_executable_bash():
    text = CI.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(CI, os.X_OK)
    subprocess.run(["bash", "-n", str(CI)], check=True)


def readme_flobc_commands() -> list[list[str]]:
    """Argument vectors of every ``.venv/bin/flobc ...`` invocation in a README code block."""
    found = []
    for block in code_blocks(README):
        for line in block.splitlines():
            tokens = shell_tokens(line)
            for i, token in enumerate(tokens):
                if token == ".venv/bin/flobc":
                    argv = []
                    for arg in tokens[i + 1:]:
                        if set(arg) <= set("();<>|&"):
                            break
                        argv.append(arg)
                    found.append(argv)
    return found


def test_readme_documents_every_command():
    shown = {tuple(argv[:2]) if argv[0] in ("keys", "testnet", "validator", "tx", "trainer",
                                            "cluster", "model")
             else (argv[0],) for argv in readme_flobc_commands()}
    assert shown == {("demo",), ("testnet", "init"), ("validator", "start"),
                     ("keys", "generate"), ("tx", "send"), ("status",), ("verify",),
                     ("cluster", "up"), ("trainer", "join"), ("model", "pull")}


@pytest.mark.parametrize("argv", readme_flobc_commands(), ids=shlex.join)
def test_readme_flobc_command_is_accepted(argv: list[str]):
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"README shows `flobc {shlex.join(argv)}`, which flobc refuses ({exc})")

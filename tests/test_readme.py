"""The README starts with the setup, main-job and test commands, and .ci/run runs the same ones."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in first_block.splitlines() if line.startswith((".venv/", "python3 "))]


def test_readme_opens_with_setup_main_job_and_tests():
    commands = _readme_commands()
    assert commands[0].startswith("python3 -m venv .venv")
    assert commands[1].startswith(".venv/bin/python -c")
    assert commands[-1] == ".venv/bin/python -m pytest"


def test_ci_runs_exactly_the_readme_setup_and_test_commands():
    commands = _readme_commands()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[0] in ci_lines
    assert commands[-1] in ci_lines

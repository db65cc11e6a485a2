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
    assert commands[1] == ".venv/bin/seglosses demo"
    assert commands[-1] == ".venv/bin/python -m pytest"


def test_ci_runs_exactly_the_readme_setup_and_test_commands():
    commands = _readme_commands()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[0] in ci_lines
    assert commands[-1] in ci_lines


def _python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


def test_readme_python_examples_run():
    """Every Python example of the README runs on small synthetic data of the shapes it names."""
    import torch

    import seglosses

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 16, 16, generator=generator)
    target = torch.randint(0, 4, (2, 3, 16, 16), generator=generator)
    slices = torch.randint(0, 4, (6, 16, 16), generator=generator)
    images = torch.randn(8, 1, 16, 16, generator=generator)
    model = torch.nn.Conv2d(1, 3, 3, padding=1)
    namespace = {
        "torch": torch,
        "seglosses": seglosses,
        "logits": logits,
        "target": target,
        "loader": [(slices, slices.roll(1, dims=-1), ["a"] * 3 + ["b"] * 3, [0, 1, 2] * 2)],
        "train_set": torch.utils.data.TensorDataset(images, (images[:, 0] > 0).long()),
        "model": model,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
        "epochs": 2,
    }
    blocks = _python_blocks()
    assert len(blocks) >= 3
    for block in blocks:
        exec(compile(block, "README.md", "exec"), dict(namespace))


def test_readme_loss_table_lists_every_registered_loss():
    import seglosses

    text = (ROOT / "README.md").read_text()
    rows = {line.split("|")[1].strip().strip("`") for line in text.splitlines() if line.startswith("| `")}
    assert set(seglosses.list_losses()) <= rows, sorted(set(seglosses.list_losses()) - rows)

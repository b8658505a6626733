"""The decorators' types as users meet them: every Python example in the docs
passes ``mypy --strict``, and a model function of the wrong shape does not."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[3]
DOCUMENTS = [
    REPOSITORY / "README.md",
    REPOSITORY / "docs" / "models.md",
    REPOSITORY / "docs" / "llm.md",
    REPOSITORY / "docs" / "oip.md",
    REPOSITORY / "workers" / "python" / "README.md",
]


def python_blocks(document: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", document.read_text(), flags=re.DOTALL)


def mypy(files: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # Examples may use clients that ship no types (tritonclient): those
        # imports are taken as `Any`; this library's own types are checked.
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--disable-error-code",
            "import-untyped",
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_python_example_in_the_docs_passes_mypy_strict(tmp_path: Path) -> None:
    files = []
    for document in DOCUMENTS:
        for index, block in enumerate(python_blocks(document)):
            path = tmp_path / f"{document.parent.name}_{document.stem.lower()}_{index}.py"
            path.write_text(block)
            files.append(path)
    assert len(files) >= 3, "the documents' examples were found"
    checked = mypy(files)
    assert checked.returncode == 0, checked.stdout


WRONG_SHAPES = {
    "two_arguments": """
@worker.model("m", version="1")
def f(x: int, y: int) -> str:
    return ""
""",
    "batch_function_as_a_model": """
@worker.model("m", version="1")
def f(batch: list[dict[str, Any]]) -> list[int]:
    return []
""",
    "single_input_as_a_batch_model": """
@worker.batch_model("m", version="1", max_batch=4)
def f(inp: dict[str, Any]) -> int:
    return 0
""",
    "chat_model_that_returns_a_string": """
@worker.chat_model("m", version="1")
def f(request: dict[str, Any]) -> str:
    return ""
""",
    "embedding_model_of_one_text": """
@worker.embedding_model("m", version="1")
def f(text: str) -> list[float]:
    return []
""",
    "no_version": """
@worker.model("m")
def f(inp: dict[str, Any]) -> int:
    return 0
""",
}


@pytest.mark.parametrize("shape", sorted(WRONG_SHAPES))
def test_mypy_rejects_a_model_function_of_the_wrong_shape(tmp_path: Path, shape: str) -> None:
    path = tmp_path / f"{shape}.py"
    path.write_text(
        "from typing import Any\n\nfrom prediction_worker import Worker\n\nworker = Worker()\n"
        + WRONG_SHAPES[shape]
    )
    checked = mypy([path])
    assert checked.returncode != 0, f"{shape} passed mypy:\n{path.read_text()}"
    assert f"{path.name}:" in checked.stdout and "error" in checked.stdout, checked.stdout

"""Dependency rules: the light modules never pull in TensorFlow; classifier never sees Django."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "classifier"
LIGHT_MODULES = [
    "classifier",
    "classifier.serving",
    "classifier.images",
    "classifier.data",
    "classifier.evaluate",
    "classifier.config",
    "classifier.errors",
]
FORBIDDEN_FOR_CLASSIFIER = {"django", "celery", "webapp", "worker", "rest_framework"}


def test_the_light_modules_import_no_tensorflow_or_keras() -> None:
    script = (
        "import importlib, sys\n"
        f"for name in {LIGHT_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = ('tensorflow', 'keras', 'tf_keras', 'jax', 'torch')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.relative_to(REPO).as_posix()
)
def test_classifier_modules_never_import_django_celery_webapp_or_worker(path: Path) -> None:
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])

    assert imported.isdisjoint(FORBIDDEN_FOR_CLASSIFIER), sorted(
        imported & FORBIDDEN_FOR_CLASSIFIER
    )

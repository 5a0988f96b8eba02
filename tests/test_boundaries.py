"""The dependency rules of the layout, checked in fresh interpreters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WEB_IMPORTS = """
import json, os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
import django
django.setup()
from django.urls import resolve, reverse
import webapp.urls, webapp.admin, webapp.services, webapp.selectors, webapp.health
import worker.tasks
for name in ("dashboard", "healthz", "classify"):
    resolve(reverse(name))
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))))
"""


def test_it_keeps_tensorflow_out_of_the_web_process():
    out = subprocess.run(
        [sys.executable, "-c", WEB_IMPORTS], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_it_keeps_django_and_celery_out_of_classifier():
    offenders = []
    for path in (ROOT / "classifier").rglob("*.py"):
        for line in path.read_text().splitlines():
            words = line.strip().split()
            if len(words) >= 2 and words[0] in ("import", "from"):
                top = words[1].split(".")[0]
                if top in ("django", "celery", "webapp", "worker"):
                    offenders.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert offenders == []

"""Activation under load: concurrent clients over HTTP never get a mixed answer, and every
request sent after the activation returned is answered by the new version."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

from tests.webapp.conftest import SERVED_LABELS, token_client

pytestmark = pytest.mark.django_db(transaction=True)

CLIENTS = 4
AFTER_SWAP = 12  # answers each client collects after the activation returned


def test_it_swaps_versions_under_concurrent_requests(live_server, served_project, viewer, manager):
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=viewer).key
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (30, 160, 90)).save(buffer, "JPEG")
    photo = buffer.getvalue()
    url = f"{live_server.url}/api/v1/projects/flowers/classify"
    answered = threading.Semaphore(0)
    swapped = threading.Event()

    def client() -> list[tuple[bool, dict]]:
        seen = []
        with requests.Session() as session:
            session.headers["Authorization"] = f"Token {token}"
            after = 0
            while after < AFTER_SWAP:
                sent_after_swap = swapped.is_set()
                response = session.post(url, files={"image": ("p.jpg", photo)}, timeout=30)
                assert response.status_code == 200, response.text
                seen.append((sent_after_swap, response.json()))
                answered.release()
                after += sent_after_swap
        return seen

    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client) for _ in range(CLIENTS)]
        for _ in range(2 * CLIENTS):  # some answers from version 1 first
            assert answered.acquire(timeout=30)
        activated = token_client(manager).post("/api/v1/projects/flowers/versions/2/activate")
        assert activated.status_code == 200
        swapped.set()
        results = [answer for future in futures for answer in future.result(timeout=60)]

    for _, body in results:
        labels = {p["label"] for p in body["predictions"]}
        assert labels == set(SERVED_LABELS[body["version"]])
    assert {body["version"] for after, body in results if after} == {2}
    assert 1 in {body["version"] for after, body in results if not after}

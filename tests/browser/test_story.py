"""The whole story in real headless Chromium: log in, upload a zip, train, watch the job,
activate, classify, roll back. Screenshots of every page go to test-artifacts/screenshots/.

Runs against pytest-django's live server (a thread of this process, on the file test
database) and a real Celery worker process on the same database and data folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from tests.factories import role_group
from tests.images import image_folder, zip_of_folder
from tests.waiting import wait_for
from webapp.models import ModelVersion, TrainingJob

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(300),
]

SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PASSWORD = "browser-pw-123"
# Small enough to train in seconds: random weights, a 32 px trunk at alpha 0.35, a tiny head.
TINY = {
    "weights": "none",
    "alpha": "0.35",
    "image_size": "32",
    "batch_size": "8",
    "learning_rate": "0.01",
    "head_units": "16",
}


@pytest.fixture
def person(db) -> User:
    user = User.objects.create_user("dana", password=PASSWORD)
    user.groups.add(role_group("Trainers"), role_group("Version managers"))
    return user


def fill_advanced(page) -> None:
    """Open the form's advanced section and set the tiny, fast training settings."""
    page.click("#advanced summary")
    for name, value in TINY.items():
        if page.locator(f"select[name={name}]").count():
            page.select_option(f"select[name={name}]", value)
        else:
            page.fill(f"input[name={name}]", value)


def shoot(page, name: str, full_page: bool = True) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


def test_the_whole_story(browser, live_server, person, data_dir, start_worker, settings, tmp_path):
    from webapp import predictor

    predictor.cache().clear()
    shutil.rmtree(SHOTS, ignore_errors=True)
    settings.GRAFT_KEEP_PREDICTION_IMAGES = True
    start_worker(queues="training,default")
    # Class 0 is drawn red, class 1 green (tests.classifier.conftest.PALETTE).
    folder = image_folder(tmp_path / "colours", {"apple": 16, "leaf": 16})
    (folder / "apple" / "notes.txt").write_text("not a photo")
    archive = zip_of_folder(folder)

    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(30_000)
    page = context.new_page()
    url = live_server.url

    # Log in.
    page.goto(url + "/")
    assert "/login/" in page.url
    shoot(page, "01-login", full_page=False)
    page.fill("input[name=username]", "dana")
    page.fill("input[name=password]", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(url + "/")
    shoot(page, "02-dashboard")

    # Create a project.
    page.click("text=Create your first project")
    page.fill("input[name=name]", "Colours")
    page.click("main button[type=submit]")
    page.wait_for_url(url + "/projects/colours/")

    # Upload a zip of class folders; see the upload progress, then the import report.
    page.click("text=Add a dataset")
    page.fill("#zip-form input[name=name]", "colours")
    page.set_input_files(
        "#zip-form input[name=archive]",
        files=[{"name": "colours.zip", "mimeType": "application/zip", "buffer": archive}],
    )
    page.click("#zip-form button[type=submit]")
    page.wait_for_url("**/datasets/*/")
    page.wait_for_selector("#dataset-status:text('Ready')", timeout=60_000)
    assert page.inner_text("#class-counts").count("16") == 2
    assert "notes.txt" in page.inner_text("#rejected")
    page.wait_for_function("[...document.querySelectorAll('.thumbs img')].every(i => i.complete)")
    assert page.eval_on_selector(".thumbs img", "img => img.naturalWidth") > 0
    shoot(page, "03-dataset")

    # Start a short job from the dataset page, with the advanced settings for speed.
    page.click("#train-this")
    fill_advanced(page)
    page.fill("input[name=epochs]", "5")
    page.uncheck("input[name=use_feature_cache]")  # stream images each epoch: slow enough to watch
    shoot(page, "04-train-form")
    page.click("#train-form button[type=submit]")
    page.wait_for_url("**/jobs/*/")
    job = TrainingJob.objects.get()

    # Watch the progress bar and the charts move while it trains.
    progress_seen, points_seen, running_shot = set(), set(), []

    def finished() -> bool:
        status = page.get_attribute("#job-live", "data-status")
        if status == "running":
            progress_seen.add(int(page.get_attribute("#job-progress", "value")))
            points_seen.add(int(page.get_attribute("#chart-loss", "data-points") or 0))
            if len(points_seen) > 1 and not running_shot:
                running_shot.append(True)
                shoot(page, "05-job-running")
        return status in ("succeeded", "failed", "cancelled")

    wait_for(finished, 120, "the job to finish")
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.SUCCEEDED, job.error
    assert any(0 < p < 100 for p in progress_seen), progress_seen
    # The charts changed while it ran (no epoch yet -> some -> all; epochs take well under a
    # second once warm, but extraction before them and the export after take seconds).
    assert len(points_seen) >= 2, points_seen
    page.wait_for_selector("#job-version")
    assert page.get_attribute("#chart-accuracy", "data-points") == "5"
    shoot(page, "06-job-done")

    # The first version became active by itself. Train a second one, then activate it.
    page.goto(url + f"/projects/colours/train/?dataset={job.dataset_id}")
    fill_advanced(page)
    page.fill("input[name=epochs]", "3")
    page.click("#train-form button[type=submit]")
    page.wait_for_url("**/jobs/*/")
    page.wait_for_selector("#job-version", timeout=120_000)
    page.click("#job-version a")
    page.wait_for_url("**/models/2/")
    shoot(page, "07-version")

    page.click("#activate")
    shoot(page, "08-confirm-activate", full_page=False)
    page.click("#confirm-button")
    page.wait_for_selector("#active-badge")
    assert "Activated" in page.inner_text("table.events")
    assert ModelVersion.objects.get(is_active=True).number == 2

    # Classify a photo; see its label, the version that answered, and mark it wrong.
    page.goto(url + "/classify/")
    red = (folder / "apple" / "apple_001.png").read_bytes()
    page.set_input_files(
        "#photos-input", files=[{"name": "apple.png", "mimeType": "image/png", "buffer": red}]
    )
    card = page.wait_for_selector(".prediction.fresh")
    assert card.inner_text().split()[0] in ("apple", "leaf")
    assert "Colours v2" in card.inner_text()
    assert card.query_selector_all(".bars li")
    shoot(page, "09-classify")
    card.query_selector("summary").click()
    card_id = card.get_attribute("id")
    # A refused correction (answered 400) shows its reason in the card.
    card.query_selector("input[name=label]").fill("../x")
    card.query_selector("form.correct button").click()
    page.wait_for_selector(f"#{card_id} .error-text")
    card = page.query_selector(f"#{card_id}")
    card.query_selector("input[name=label]").fill("apple")
    card.query_selector("form.correct button").click()
    page.wait_for_selector(f"#{card_id} .badge:text('really apple')")

    # Roll back to v1.
    page.goto(url + "/projects/colours/")
    shoot(page, "10-project")
    page.click("text=Roll back…")
    page.click("#confirm-button")
    page.wait_for_url("**/models/1/")
    assert "Rolled back" in page.inner_text("table.events")
    assert ModelVersion.objects.get(is_active=True).number == 1
    shoot(page, "11-rolled-back")

    # The pages on a phone-width screen.
    phone = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
    )
    phone.add_cookies(context.cookies())
    mobile = phone.new_page()
    mobile.goto(url + "/classify/")
    assert mobile.evaluate("document.documentElement.scrollWidth") <= 390
    shoot(mobile, "12-phone-classify")
    mobile.goto(url + f"/jobs/{job.pk}/")
    shoot(mobile, "13-phone-job")
    phone.close()
    context.close()
    assert os.listdir(SHOTS)

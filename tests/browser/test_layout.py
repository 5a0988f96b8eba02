"""Layout checks that only a real browser can make: a phone-width page that scrolls
sideways, a control whose keyboard focus cannot be seen. No worker is needed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from tests.factories import make_dataset, make_project, make_version, role_group

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(120),
]

PHONE = {"width": 390, "height": 844}
LONG_PROJECT = "Supercalifragilisticexpialidocious_herbarium_specimens_collection_2026"
LONG_DATASET = "scans_" + "x" * 90


@pytest.fixture
def logged_in(browser, live_server) -> Iterator:
    """A phone-sized page of a trainer's session."""
    user = User.objects.create_user("dana")
    user.groups.add(role_group("Trainers"))
    client = Client()
    client.force_login(user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    context = browser.new_context(viewport=PHONE, is_mobile=True)
    context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}]
    )
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def test_it_wraps_long_names_in_breadcrumbs_on_a_phone(logged_in, live_server):
    """A project or dataset name without spaces widened the page to 1700 px."""
    project = make_project(LONG_PROJECT, slug="herbarium")
    dataset = make_dataset(project, LONG_DATASET)
    pages = [
        project.get_absolute_url(),
        dataset.get_absolute_url(),
        f"/projects/{project.slug}/train/",
        f"/projects/{project.slug}/datasets/new/",
    ]
    for path in pages:
        logged_in.goto(live_server.url + path)
        width = logged_in.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{path} is {width} px wide"


def test_it_shows_keyboard_focus_on_the_photo_pickers(logged_in, live_server):
    """The pickers are labels styled as buttons over an invisible file input; tabbing onto
    the input showed nothing at all."""
    make_version(make_project("Flowers"), 1, is_active=True)
    logged_in.goto(live_server.url + "/classify/")
    shadow = "getComputedStyle(document.querySelector('#photos-input').parentElement).boxShadow"
    resting = logged_in.evaluate(shadow)
    for _ in range(30):
        logged_in.keyboard.press("Tab")
        if logged_in.evaluate("document.activeElement.id") == "photos-input":
            break
    assert logged_in.evaluate("document.activeElement.id") == "photos-input"
    logged_in.wait_for_function(f"{shadow} !== {resting!r}")

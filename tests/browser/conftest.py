"""Browser fixtures: one JupyterLab server and one Chromium per session, a page per test.

Screenshots go to ``$SANDBOX_MAGICS_SCREENSHOTS`` (default ``build/screenshots``); the
README's pictures are made with ``SANDBOX_MAGICS_SCREENSHOTS=docs/screenshots``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_PROFILES, kernel_env
from tests.browser.lab import CHROMIUM_ARGS, JupyterLab, Notebook, ensure_chromium

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def screenshots() -> Path:
    path = Path(os.environ.get("SANDBOX_MAGICS_SCREENSHOTS", REPO / "build" / "screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_lab(base: Path, args: tuple[str, ...] = ()) -> JupyterLab:
    """A JupyterLab server in ``base`` whose kernels use the test profiles."""
    root = base / "notebooks"
    root.mkdir()
    profiles = base / "profiles.toml"
    profiles.write_text(TEST_PROFILES)
    return JupyterLab(root, kernel_env(profiles, base / "ws"), args)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    server = start_lab(tmp_path_factory.mktemp("lab"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one test module. Playwright's sync API keeps an event loop running in
    this thread while it is open, so it is stopped after each browser module: tests of
    other modules call asyncio.run. Scrollbars show and take room, as in a user's Chromium
    (Playwright hides them in headless mode)."""
    executable = ensure_chromium()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True,
                                     ignore_default_args=["--hide-scrollbars"])
        yield chromium
        chromium.close()


def new_page(browser: Any) -> tuple[Any, Any]:
    """A browser context and its page; the page's script errors collect in ``page.errors``."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                  accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    return context, page


def screenshot_if_failed(page: Any, screenshots: Path, request: pytest.FixtureRequest) -> None:
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        try:
            page.screenshot(path=str(screenshots / f"FAILED-{request.node.name}.png"))
        except Exception:
            pass


@pytest.fixture
def page(browser: Any, lab: JupyterLab, screenshots: Path,
         request: pytest.FixtureRequest) -> Iterator[Any]:
    context, page = new_page(browser)
    yield page
    screenshot_if_failed(page, screenshots, request)
    context.close()


@pytest.fixture(scope="module")
def shared_page(browser: Any) -> Iterator[Any]:
    """One page for a module's `notebook` tests: each opens its notebook in the JupyterLab
    the page loaded already, which takes half the time of loading JupyterLab again."""
    context, page = new_page(browser)
    yield page
    context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


@pytest.fixture
def notebook(lab: JupyterLab, shared_page: Any, screenshots: Path,
             request: pytest.FixtureRequest) -> Iterator[Notebook]:
    """A new notebook named after the test, opened in the module's page, its kernel started
    and the extension loaded; closed afterwards, its kernel shut down."""
    name = request.node.name.replace("[", "_").replace("]", "") + ".ipynb"
    shared_page.errors.clear()
    nb = Notebook(lab, shared_page, name, reuse=True)
    nb.run("%load_ext sandbox_magics")
    yield nb
    screenshot_if_failed(shared_page, screenshots, request)
    try:
        nb.page.evaluate("async () => { const p = window.sbxTest.nb();"
                         " await p.sessionContext.shutdown(); p.context.model.dirty = false;"
                         " p.dispose(); }")
    except Exception:
        pass

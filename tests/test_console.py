"""The web console at /console, clicked through in a real headless browser (Debian's Chromium + chromedriver)
against the session's server. Screenshots of every page are kept in test-artifacts/console/ (git-ignored)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import API_KEY, MODEL, ROOT, RunningServer, new_key

ARTIFACTS = ROOT / "test-artifacts" / "console"
WAIT_S = 120  # the engine shares two cores with everything else on a CI box


def chromium() -> tuple[str, str]:
    """Debian's chromium and chromedriver (scripts/install.sh installs them)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    assert browser and driver, "chromium and chromedriver are needed: run scripts/install.sh (apt-get, as root)"
    return browser, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    binary, driver_path = chromium()
    options = Options()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1360,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


class Console:
    """One signed-in console tab, and the steps the tests take in it."""

    def __init__(self, driver: WebDriver, server: RunningServer, artifacts: Path, prefix: str) -> None:
        self.driver, self.server, self.artifacts, self.prefix = driver, server, artifacts, prefix

    def wait(self, condition: Callable[[WebDriver], object], timeout: float = WAIT_S) -> object:
        # A page redraws its tables as data arrives: an element read mid-redraw is retried, not an error.
        ignored = (StaleElementReferenceException,)
        return WebDriverWait(self.driver, timeout, poll_frequency=0.2, ignored_exceptions=ignored).until(condition)

    def by_id(self, element_id: str) -> WebElement:
        return self.driver.find_element(By.ID, element_id)

    def visible(self, element_id: str) -> WebElement:
        return self.wait(expected_conditions.visibility_of_element_located((By.ID, element_id)))

    def text_in(self, element_id: str, text: str, timeout: float = WAIT_S) -> None:
        self.wait(expected_conditions.text_to_be_present_in_element((By.ID, element_id), text), timeout)

    def rows(self, table_id: str) -> list[str]:
        return self.wait(
            lambda driver: [row.text for row in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")] or None
        )

    def cells(self, table_id: str, text: str, where: Callable[[list[str]], bool] = lambda cells: True) -> list[str]:
        """The cells of the first row holding `text` (and passing `where`), once one does; the table may be redrawn
        meanwhile, so its rows are read afresh each time."""

        def found(driver: WebDriver) -> list[str] | bool:
            try:
                for row in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr"):
                    cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
                    if text in row.text and where(cells):
                        return cells
            except StaleElementReferenceException:
                pass
            return False

        return self.wait(found)

    def click_in_row(self, table_id: str, text: str, label: str) -> None:
        def clicked(driver: WebDriver) -> bool:
            try:
                for row in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr"):
                    if text in row.text:
                        row.find_element(By.XPATH, f".//button[text()='{label}']").click()
                        return True
            except (StaleElementReferenceException, NoSuchElementException):
                pass
            return False

        self.wait(clicked)

    def fill(self, element_id: str, text: str) -> None:
        field = self.by_id(element_id)
        field.clear()
        field.send_keys(text)

    def shot(self, name: str) -> Path:
        path = self.artifacts / f"{self.prefix}-{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        return path

    def no_error(self) -> None:
        flash = self.by_id("flash")
        assert not flash.is_displayed() or "info" in (flash.get_attribute("class") or ""), flash.text

    def open(self) -> None:
        self.driver.get(f"{self.server.base_url}/console/")
        self.driver.execute_script("sessionStorage.clear()")
        self.driver.get(f"{self.server.base_url}/console/#signin")
        self.visible("signin-key")

    def sign_in(self, key: str) -> None:
        self.open()
        self.fill("signin-key", key)
        self.by_id("signin-button").click()
        self.visible("page-usage")

    def go(self, page: str) -> None:
        self.driver.find_element(By.CSS_SELECTOR, f'nav a[data-page="{page}"]').click()
        self.visible(f"page-{page}")

    def accept_dialog(self, text: str | None = None) -> None:
        alert = self.wait(expected_conditions.alert_is_present(), 10)
        if text is not None:
            alert.send_keys(text)
        alert.accept()


@pytest.fixture
def console(
    browser: WebDriver, server: RunningServer, artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[Console]:
    tab = Console(browser, server, artifacts, request.node.name.removeprefix("test_")[:40])
    yield tab
    tab.shot("last")  # where the test ended (on a failure: what the page showed)


def chat(session: httpx.Client, **extra: object) -> dict:
    response = session.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 4, **extra},
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_console_files_are_public_and_nothing_else_is(server: RunningServer) -> None:
    page = httpx.get(f"{server.base_url}/console/", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="signin-form"' in page.text
    bare = httpx.get(f"{server.base_url}/console", timeout=30, follow_redirects=True)
    assert bare.status_code == 200 and 'id="signin-form"' in bare.text
    for asset in ("app.js", "charts.js", "style.css"):
        assert httpx.get(f"{server.base_url}/console/{asset}", timeout=30).status_code == 200
    # Only the console's own files are public: any other path under it still needs a key.
    missing = httpx.get(f"{server.base_url}/console/secret.txt", timeout=30)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    with_key = httpx.get(
        f"{server.base_url}/console/secret.txt", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
    )
    assert with_key.status_code == 404


def test_a_refused_key_stays_signed_out(console: Console) -> None:
    console.open()
    console.fill("signin-key", "not-a-key")
    console.by_id("signin-button").click()
    console.text_in("flash", "refused")
    assert console.by_id("page-signin").is_displayed() and not console.by_id("nav").is_displayed()
    assert console.driver.execute_script("return sessionStorage.length") == 0
    console.shot("signin-refused")


def test_admin_clicks_through_every_page(console: Console, http: httpx.Client) -> None:
    session = f"console-{uuid.uuid4().hex[:8]}"
    chat(http, session_id=session, tags=["console-test"])
    console.sign_in(API_KEY)
    assert console.by_id("nav-keys").is_displayed()

    # Usage: a chart over time and totals, by model and then by session.
    console.cells("usage-table", MODEL)
    assert console.driver.find_elements(By.CSS_SELECTOR, "#usage-chart svg rect.bar")
    Select(console.by_id("usage-group")).select_by_value("session_id")
    console.cells("usage-table", session)
    Select(console.by_id("usage-group")).select_by_value("model")
    console.cells("usage-table", MODEL)
    console.no_error()
    console.shot("usage")

    # Keys and credits: create one (its secret shown once), then revoke it.
    console.go("keys")
    name = f"console-key-{uuid.uuid4().hex[:6]}"
    console.fill("key-name", name)
    console.fill("key-credits", "5000")
    console.by_id("key-create").click()
    console.text_in("key-secret", "shown once")
    assert console.cells("keys-table", name)[3] == "5000"
    console.shot("keys")
    console.click_in_row("keys-table", name, "Revoke")
    console.cells("keys-table", name, lambda cells: cells[7] != "")  # revoked at
    console.no_error()

    # Memory: a new group, add, search, edit, delete, audit trail, delete the group.
    console.go("memory")
    group = f"console-{uuid.uuid4().hex[:8]}"
    console.fill("group-new-name", group)
    console.fill("group-new-text", "I keep three beehives in the garden.")
    console.by_id("group-new-add").click()
    console.text_in("group-title", group)
    console.fill("memory-add-text", "My bees make clover honey.")
    console.by_id("memory-add").click()
    console.cells("memories-table", "clover honey")
    console.fill("memory-search", "What do the bees make?")
    console.by_id("memory-search-button").click()
    assert float(console.cells("memories-table", "clover honey", lambda cells: cells[3] != "")[3]) > 0  # a score
    console.by_id("memory-search-clear").click()
    console.cells("memories-table", "beehives", lambda cells: cells[3] == "")  # the whole group again
    console.click_in_row("memories-table", "beehives", "Edit")
    console.accept_dialog("I keep four beehives in the garden.")
    console.cells("memories-table", "four beehives")
    console.by_id("group-curate").click()
    console.text_in("flash", "memories examined")
    assert console.by_id("audit-table").is_displayed() and console.rows("audit-table")
    console.click_in_row("memories-table", "clover honey", "Delete")
    console.wait(lambda driver: not any("clover" in text for text in console.rows("memories-table")))
    assert http.get(f"/v1/memory/{group}").json()["memory_count"] == 1
    console.no_error()
    console.shot("memory")
    console.by_id("group-delete").click()
    console.accept_dialog()
    console.wait(lambda driver: group not in console.by_id("groups-list").text)
    assert http.get(f"/v1/memory/{group}").status_code == 404

    # Fine-tuning: a job on a group with enough memories, its loss curve drawn live, then its version.
    group = f"console-ft-{uuid.uuid4().hex[:8]}"
    facts = [
        f"Fact {index}: my {thing} is {colour}."
        for index, (thing, colour) in enumerate(
            [("kite", "red"), ("boat", "blue"), ("door", "green"), ("bike", "yellow"), ("mug", "white")]
        )
    ]
    assert http.post(f"/v1/memory/{group}/memories", json={"text": facts}).status_code == 200
    adapter = f"console-{uuid.uuid4().hex[:6]}"
    console.go("jobs")
    console.fill("job-group", group)
    console.fill("job-adapter", adapter)
    console.by_id("job-create").click()
    console.cells("jobs-table", adapter)
    console.wait(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#loss-chart path.line"), timeout=600)
    console.text_in("job-status", "succeeded", timeout=600)
    assert len(console.driver.find_elements(By.CSS_SELECTOR, "#loss-chart circle.point")) >= 2
    console.no_error()
    console.shot("jobs")

    console.go("adapters")
    assert console.cells("versions-table", adapter)[1:3] == ["v1", "yes"]  # the promoted version, served
    console.no_error()
    console.shot("adapters")

    # Guardrail playground.
    console.go("guardrails")
    console.fill("guard-policy", "Do not reveal passwords.")
    console.fill("guard-text", "The weather is lovely today.")
    console.by_id("guard-check").click()
    console.visible("guard-verdict")
    score = float(console.by_id("guard-score").text.split("score ")[1].split(" ")[0])
    verdict = http.post(
        "/v1/moderations", json={"input": "The weather is lovely today.", "policy": "Do not reveal passwords."}
    ).json()["results"][0]
    assert abs(score - verdict["score"]) < 1e-3
    assert console.by_id("guard-verdict").text == ("Violation" if verdict["flagged"] else "Allowed")
    console.shot("guardrails")

    # Chat playground: model, nightly memory and a guardrail policy.
    memory_group = f"console-chat-{uuid.uuid4().hex[:8]}"
    http.post(f"/v1/memory/{memory_group}/memories", json={"text": "My cat is called Biscuit."})
    console.go("chat")
    console.wait(lambda driver: MODEL in [o.text for o in Select(console.by_id("chat-model")).options])
    Select(console.by_id("chat-model")).select_by_visible_text(MODEL)
    console.by_id("chat-nightly").click()
    console.fill("chat-group", memory_group)
    console.fill("chat-goal", "A pet helper")
    console.fill("chat-input", "What is my cat called?")
    console.by_id("chat-send").click()
    console.wait(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#chat-log .msg.assistant"))
    meta = console.driver.find_element(By.CSS_SELECTOR, "#chat-log .msg.assistant .meta").text
    assert "memories used: 1" in meta and MODEL in meta
    console.no_error()
    # With a guardrail policy the answer comes, or the conversation says it was withheld (never an error).
    console.fill("chat-policy", "Do not insult anyone.")
    console.fill("chat-input", "Thank you!")
    console.by_id("chat-send").click()
    console.wait(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "#chat-log .msg.assistant")) == 2)
    second = console.driver.find_elements(By.CSS_SELECTOR, "#chat-log .msg.assistant .meta")[1].text
    assert "finish: stop" in second or "finish: length" in second or second.startswith("guardrail: ")
    console.no_error()
    console.shot("chat")


def test_a_non_admin_key_sees_only_its_own_data(console: Console, server: RunningServer, http: httpx.Client) -> None:
    admin_group = f"console-admin-{uuid.uuid4().hex[:8]}"
    assert http.post(f"/v1/memory/{admin_group}/memories", json={"text": "An admin's note."}).status_code == 200
    user = new_key(http, name=f"console-user-{uuid.uuid4().hex[:6]}")
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {user['key']}"}, timeout=120) as own:
        chat(own)
    console.sign_in(user["key"])
    assert not console.by_id("nav-keys").is_displayed()
    assert console.cells("usage-table", MODEL)[1] == "1"  # its one request, not everyone's
    console.shot("usage")
    console.driver.get(f"{server.base_url}/console/#keys")  # not an admin: the keys page is not shown
    console.visible("page-usage")
    assert not console.by_id("page-keys").is_displayed()

    console.go("memory")
    own_group = f"console-user-{uuid.uuid4().hex[:8]}"
    console.fill("group-new-name", own_group)
    console.fill("group-new-text", "I water the plants on Fridays.")
    console.by_id("group-new-add").click()
    console.text_in("group-title", own_group)
    listed = console.by_id("groups-list").text
    assert own_group in listed and admin_group not in listed
    assert http.get(f"/v1/memory/{own_group}").status_code == 404  # the admin key does not see it either
    console.shot("memory")

    console.go("jobs")
    console.wait(lambda driver: console.rows("jobs-table"))
    assert console.rows("jobs-table") == ["No fine-tuning jobs yet."]
    console.no_error()
    console.by_id("signout").click()
    console.visible("page-signin")
    assert console.driver.execute_script("return sessionStorage.length") == 0

"""The upload page at `/`: served with its landmarks, and driven end to end in real headless Chromium.

The browser tests use Debian's `chromium` and `chromium-driver` (installed with apt-get when missing, as CI
runs as root) through Selenium, with the driver path given explicitly so Selenium Manager downloads nothing.
Set UPDATE_README_SCREENSHOT=1 to copy the page's screenshot to docs/screenshot.png for the README.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.wait import WebDriverWait

from app.config import CPU_PROVIDER, Settings
from app.explain import OVERLAY_SCALE
from app.main import create_app
from app.routes.web import CONTENT_SECURITY_POLICY, STATIC_MEDIA_TYPES
from model.labels import imagenet_labels
from tests.app.live_server import LiveServer
from tests.app.standin import TENCH, Photo, photo_of

REPO_ROOT = Path(__file__).resolve().parents[2]
README_SCREENSHOT = REPO_ROOT / "docs" / "screenshot.png"
# Not ALEXNET_*: tests/conftest.py hides those from the whole session.
UPDATE_SCREENSHOT_ENV = "UPDATE_README_SCREENSHOT"

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
APT_PACKAGES = ("chromium", "chromium-driver")
APT_TIMEOUT_S = 900
# Headless, as root in a container, with nothing talking to Google's services in the background.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
DESKTOP_WIDTH = 1100
PHONE_WIDTH = 375
VIEWPORT_HEIGHT = 900

SERVER_READY_TIMEOUT_S = 90.0
READY_POLL_INTERVAL_S = 0.2
SERVER_STOP_TIMEOUT_S = 30.0
BROWSER_WAIT_S = 30.0
TOP5 = 5
API_KEY = "web-page-test-key"


# ---------------------------------------------------------------- fast: the page as the app serves it


@dataclass(frozen=True)
class Element:
    tag: str
    attributes: dict[str, str]


GIANT_PANDA = "n02510455"


@pytest.mark.slow
def test_explain_overlays_the_heatmap_with_its_text_alternative(
    browser: webdriver.Chrome, standin_server: LiveServer, photos: list[Photo]
) -> None:
    photo = photo_of(photos, GIANT_PANDA)
    answer = httpx.post(
        f"{standin_server.url}/v1/explain", files={"file": (photo.path.name, photo.read(), "image/jpeg")}, timeout=60
    )
    assert answer.status_code == 200
    text = answer.json()["text"]
    open_page(browser, standin_server.url)
    assert not browser.find_element(By.ID, "explanation").is_displayed()

    browser.find_element(By.ID, "file-input").send_keys(str(photo.path))
    wait_for_bars(browser)
    browser.find_element(By.ID, "explain").click()

    WebDriverWait(browser, BROWSER_WAIT_S).until(
        lambda driver: (
            driver.find_element(By.ID, "explanation-overlay").get_attribute("naturalWidth") == str(227 * OVERLAY_SCALE)
        ),
        "the heatmap overlay never appeared",
    )
    overlay = browser.find_element(By.ID, "explanation-overlay")
    assert overlay.is_displayed()
    assert overlay.get_attribute("alt") == f"Heatmap over the image as the model saw it. {text}"
    assert browser.find_element(By.ID, "explanation-text").text == text
    assert browser.find_element(By.ID, "explanation-text").get_attribute("role") == "status"
    assert "red: hiding that area lowers the probability" in browser.find_element(By.ID, "explanation-legend").text
    assert browser.find_element(By.ID, "explanation").get_attribute("aria-busy") == "false"
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert console_errors(browser) == []


class ElementCollector(HTMLParser):
    """Every start tag of a page, in order, with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(Element(tag, {name: value or "" for name, value in attrs}))


def parse_elements(html: str) -> list[Element]:
    collector = ElementCollector()
    collector.feed(html)
    return collector.elements


def element_by_id(elements: list[Element], element_id: str) -> Element:
    matches = [element for element in elements if element.attributes.get("id") == element_id]
    assert len(matches) == 1, f"expected one element with id {element_id!r}, found {len(matches)}"
    return matches[0]


@pytest.fixture(scope="module")
def page_client(served_model_path: Path) -> Iterator[TestClient]:
    settings = Settings(model_path=served_model_path, auto_export=False, providers=[CPU_PROVIDER])
    with TestClient(create_app(settings)) as client:
        yield client


def test_page_has_its_landmarks(page_client: TestClient) -> None:
    response = page_client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    elements = parse_elements(response.text)
    tags = [element.tag for element in elements]
    assert tags.count("main") == 1 and tags.count("h1") == 1
    viewport = [element for element in elements if element.attributes.get("name") == "viewport"]
    assert viewport and "width=device-width" in viewport[0].attributes["content"]
    file_input = element_by_id(elements, "file-input")
    assert file_input.tag == "input" and file_input.attributes["type"] == "file"
    assert file_input.attributes["accept"] == "image/*"
    assert file_input.attributes["name"] == "file"
    assert element_by_id(elements, "drop-zone").attributes["for"] == "file-input"
    assert element_by_id(elements, "api-key").attributes["type"] == "password"
    labelled = {element.attributes["for"] for element in elements if element.tag == "label"}
    assert {"file-input", "api-key"} <= labelled
    assert element_by_id(elements, "results").attributes["aria-live"] == "polite"
    assert element_by_id(elements, "error").attributes["role"] == "alert"
    for banner in ("banner-untrained", "banner-cpu", "banner-starting"):
        assert "hidden" in element_by_id(elements, banner).attributes


def test_page_uses_only_its_own_assets(page_client: TestClient) -> None:
    page = page_client.get("/")
    references = [
        element.attributes[attribute]
        for element in parse_elements(page.text)
        for attribute in ("href", "src")
        if attribute in element.attributes and element.tag in {"link", "script", "img"}
    ]

    assert sorted(references) == sorted(f"static/{name}" for name in STATIC_MEDIA_TYPES)
    for name, media_type in STATIC_MEDIA_TYPES.items():
        asset = page_client.get(f"/static/{name}")
        assert asset.status_code == 200
        assert asset.headers["content-type"] == media_type
        assert asset.headers["x-content-type-options"] == "nosniff"
        assert "://" not in asset.text.replace("http://www.w3.org/2000/svg", "")


def test_unknown_static_file_is_a_404(page_client: TestClient) -> None:
    # index.html is in app/static too, but only the listed assets are served from /static.
    response = page_client.get("/static/index.html")

    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "no static file named 'index.html'"}}


# ---------------------------------------------------------------- slow: the real server in real Chromium


def format_percent(probability: float) -> str:
    """The page's `formatPercent`: JavaScript's toFixed(2) rounds the exact binary value, ties upwards."""
    return f"{Decimal(probability * 100).quantize(Decimal('0.01'), rounding=ROUND_HALF_UP)}%"


def photo_jpeg() -> bytes:
    """A small landscape (sky, sun, hills), so the preview in the screenshot looks like a photo."""
    width, height = 480, 320
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):
        shade = y / height
        draw.line([(0, y), (width, y)], fill=(int(90 + 120 * shade), int(150 + 70 * shade), int(235 - 40 * shade)))
    draw.ellipse((330, 40, 410, 120), fill=(255, 214, 90))
    draw.polygon([(0, 240), (140, 170), (300, 230), (480, 180), (480, 320), (0, 320)], fill=(62, 128, 72))
    draw.polygon([(0, 290), (200, 250), (480, 280), (480, 320), (0, 320)], fill=(40, 96, 52))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def install_chromium() -> str | None:
    """apt-get install Debian's chromium and its driver; None when that worked, else why it cannot."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available, so Debian's chromium cannot be installed here"
    if os.geteuid() != 0:
        return f"not root, so cannot run apt-get; install them with `sudo apt-get install {' '.join(APT_PACKAGES)}`"
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES]
    # A fresh container has no package lists yet: update once, then retry.
    for commands in ([install], [["apt-get", "update"], install]):
        results = [
            subprocess.run(command, env=environment, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
            for command in commands
        ]
        if all(result.returncode == 0 for result in results) and CHROMIUM.exists() and CHROMEDRIVER.exists():
            return None
    return f"`{' '.join(install)}` failed: {results[-1].stderr.strip()[-500:]}"


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed with apt-get if missing."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        reason = install_chromium()
        if reason is not None:
            pytest.skip(f"no headless Chromium for the browser test: {reason}")
    return CHROMIUM


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until_ready(url: str, server: subprocess.Popen[bytes], log_path: Path) -> None:
    """Poll /health/ready until it answers 200, failing early if the server exits."""
    deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server exited with status {server.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(READY_POLL_INTERVAL_S)
    pytest.fail(f"the server was not ready within {SERVER_READY_TIMEOUT_S:.0f} s:\n{log_path.read_text()}")


def serve(model_path: Path, log_path: Path, extra_environment: dict[str, str]) -> Iterator[str]:
    """`python -m app` on a free loopback port until the generator is closed; yields its base URL."""
    port = free_loopback_port()
    environment = {name: value for name, value in os.environ.items() if not name.startswith("ALEXNET_")}
    environment |= {
        "ALEXNET_HOST": "127.0.0.1",
        "ALEXNET_PORT": str(port),
        "ALEXNET_MODEL_PATH": str(model_path),
        "ALEXNET_AUTO_EXPORT": "false",
        # CPU only, so the "running on the CPU" banner shows on GPU machines too.
        "ALEXNET_PROVIDERS": CPU_PROVIDER,
        "ALEXNET_LOG_FORMAT": "plain",
        "ALEXNET_DRAIN_DELAY_S": "0",
        **extra_environment,
    }
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "app"], cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_until_ready(url, server, log_path)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@pytest.fixture(scope="module")
def server_url(served_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from serve(served_model_path, tmp_path_factory.mktemp("server") / "server.log", {})


@pytest.fixture(scope="module")
def keyed_server_url(served_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from serve(served_model_path, tmp_path_factory.mktemp("keyed") / "server.log", {"ALEXNET_API_KEY": API_KEY})


@pytest.fixture(scope="module")
def browser(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument(f"--window-size={DESKTOP_WIDTH},{VIEWPORT_HEIGHT}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def predict_with_api(url: str, filename: str, data: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/predict", files={"file": (filename, data, "image/jpeg")}, headers=headers)


def open_page(browser: webdriver.Chrome, url: str) -> None:
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    browser.get(f"{url}/")
    # The health check fills in the banners right after load.
    WebDriverWait(browser, BROWSER_WAIT_S).until(
        lambda driver: driver.execute_script("return document.readyState") == "complete"
    )
    # Start from an empty console: the module's browser is shared, and earlier tests log failed requests.
    console_errors(browser)


def wait_for_bars(browser: webdriver.Chrome) -> list[tuple[str, str]]:
    """The (label, percentage) pairs the page shows, once it shows all five."""
    WebDriverWait(browser, BROWSER_WAIT_S).until(
        lambda driver: (
            len(driver.find_elements(By.CSS_SELECTOR, "#bars .bar")) == TOP5
            and driver.find_element(By.ID, "results").get_attribute("aria-busy") == "false"
        ),
        "the page never showed five bars",
    )
    return [
        (bar.find_element(By.CLASS_NAME, "bar-label").text, bar.find_element(By.CLASS_NAME, "bar-percent").text)
        for bar in browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    ]


def expected_bars(prediction: dict[str, Any]) -> list[tuple[str, str]]:
    return [(score["label"], format_percent(score["probability"])) for score in prediction["top5"]]


def wait_for_error(browser: webdriver.Chrome) -> tuple[str, str]:
    """The error box's title and message, once it shows."""
    WebDriverWait(browser, BROWSER_WAIT_S).until(
        lambda driver: driver.find_element(By.ID, "error").is_displayed(), "the page never showed an error"
    )
    box = browser.find_element(By.ID, "error")
    return box.find_element(By.TAG_NAME, "strong").text, box.find_element(By.TAG_NAME, "p").text


def console_errors(browser: webdriver.Chrome) -> list[str]:
    # Content-Security-Policy violations and failed loads are logged as SEVERE.
    entries: list[dict[str, Any]] = browser.get_log("browser")  # type: ignore[no-untyped-call]
    return [entry["message"] for entry in entries if entry["level"] == "SEVERE"]


def full_page_screenshot(browser: webdriver.Chrome, width: int, path: Path) -> None:
    """A screenshot of the whole page laid out `width` CSS pixels wide."""
    metrics = {"width": width, "height": VIEWPORT_HEIGHT, "deviceScaleFactor": 1, "mobile": width <= PHONE_WIDTH}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    height: int = browser.execute_script("return document.documentElement.scrollHeight")
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics | {"height": height})
    assert browser.save_screenshot(str(path)), f"could not save {path}"


@pytest.mark.slow
def test_uploaded_jpeg_shows_the_apis_top5(browser: webdriver.Chrome, server_url: str, tmp_path: Path) -> None:
    photo = tmp_path / "landscape.jpg"
    photo.write_bytes(photo_jpeg())
    answer = predict_with_api(server_url, photo.name, photo.read_bytes())
    assert answer.status_code == 200
    open_page(browser, server_url)

    browser.find_element(By.ID, "file-input").send_keys(str(photo))

    assert wait_for_bars(browser) == expected_bars(answer.json())
    assert browser.find_element(By.ID, "banner-untrained").is_displayed()
    assert "Untrained model." in browser.find_element(By.ID, "banner-untrained").text
    assert browser.find_element(By.ID, "banner-cpu").is_displayed()
    assert CPU_PROVIDER in browser.find_element(By.ID, "banner-cpu").text
    assert not browser.find_element(By.ID, "banner-starting").is_displayed()
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert browser.find_element(By.ID, "timing").text.startswith("Server time ")
    assert browser.find_element(By.ID, "preview").get_attribute("naturalWidth") == "480"
    assert console_errors(browser) == []

    desktop, phone = tmp_path / "web-page.png", tmp_path / "web-page-phone.png"
    full_page_screenshot(browser, DESKTOP_WIDTH, desktop)
    full_page_screenshot(browser, PHONE_WIDTH, phone)
    page_width = browser.execute_script("return document.documentElement.scrollWidth")
    assert page_width == PHONE_WIDTH, "the page scrolls sideways on a phone"
    if os.environ.get(UPDATE_SCREENSHOT_ENV) == "1":
        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(desktop, README_SCREENSHOT)


DISPATCH_IMAGE_EVENT = """
const [encoded, kind, name] = arguments;
const bytes = Uint8Array.from(atob(encoded), (character) => character.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
const init = { bubbles: true, cancelable: true };
const event = kind === "drop"
  ? new DragEvent("drop", { ...init, dataTransfer: transfer })
  : new ClipboardEvent("paste", { ...init, clipboardData: transfer });
document.getElementById("drop-zone").dispatchEvent(event);
"""


@pytest.mark.slow
def test_percentages_are_formatted_as_the_page_does(browser: webdriver.Chrome, server_url: str) -> None:
    open_page(browser, server_url)
    # 0.00125 * 100 is exactly 0.125: a tie that JavaScript rounds up and Python's own format rounds to even.
    probabilities = [0.00125, 0.4172495901584625, 0.999949, 1.0, 0.0, 1e-9]

    shown = browser.execute_script("return arguments[0].map(formatPercent)", probabilities)

    assert shown == [format_percent(probability) for probability in probabilities]
    assert shown[0] == "0.13%"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["drop", "paste"])
def test_dropped_or_pasted_image_is_classified(browser: webdriver.Chrome, server_url: str, kind: str) -> None:
    data = photo_jpeg()
    answer = predict_with_api(server_url, "landscape.jpg", data)
    open_page(browser, server_url)

    browser.execute_script(DISPATCH_IMAGE_EVENT, base64.b64encode(data).decode("ascii"), kind, "landscape.jpg")

    assert wait_for_bars(browser) == expected_bars(answer.json())
    assert browser.find_element(By.ID, "preview-caption").text.startswith("landscape.jpg · 480×320")


@pytest.mark.slow
def test_dropped_real_photo_shows_its_class_first(
    browser: webdriver.Chrome, standin_server: LiveServer, photos: list[Photo]
) -> None:
    # The trained stand-in (tests/app/standin.py) on a real ImageNet photo: the page must name the right class first.
    tench = photo_of(photos, TENCH)
    data = tench.read()
    answer = predict_with_api(standin_server.url, tench.path.name, data)
    assert answer.json()["top1"]["wnid"] == TENCH
    open_page(browser, standin_server.url)

    browser.execute_script(DISPATCH_IMAGE_EVENT, base64.b64encode(data).decode("ascii"), "drop", tench.path.name)

    bars = wait_for_bars(browser)
    assert bars[0][0] == imagenet_labels()[tench.index].label == "tench, Tinca tinca"
    assert bars == expected_bars(answer.json())
    # The CPU banner shows once the page has read /health, so by then a trained model's page shows no warning.
    WebDriverWait(browser, BROWSER_WAIT_S).until(lambda driver: driver.find_element(By.ID, "banner-cpu").is_displayed())
    assert not browser.find_element(By.ID, "banner-untrained").is_displayed()
    assert console_errors(browser) == []


@pytest.mark.slow
def test_api_error_is_shown_readably(browser: webdriver.Chrome, server_url: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a JPEG")
    answer = predict_with_api(server_url, broken.name, broken.read_bytes())
    assert answer.status_code in {400, 415}
    open_page(browser, server_url)

    browser.find_element(By.ID, "file-input").send_keys(str(broken))

    title, message = wait_for_error(browser)
    assert message == answer.json()["error"]["message"]
    assert title in {"The image could not be decoded.", "That file is not an image the server can read."}
    assert browser.find_elements(By.CSS_SELECTOR, "#bars .bar") == []
    assert browser.find_element(By.ID, "status").text == "No result."
    WebDriverWait(browser, BROWSER_WAIT_S).until(
        lambda driver: driver.find_element(By.ID, "preview-caption").text.endswith("this browser cannot preview it"),
        "a file the browser cannot display still shows a broken preview",
    )
    assert not browser.find_element(By.ID, "preview").is_displayed()


@pytest.mark.slow
def test_file_chooser_is_reachable_by_keyboard(browser: webdriver.Chrome, server_url: str) -> None:
    open_page(browser, server_url)

    for _ in range(10):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        if browser.switch_to.active_element.get_attribute("id") == "file-input":
            break
    else:
        pytest.fail("ten Tab presses never reached the file chooser")
    outline = browser.execute_script("return getComputedStyle(document.getElementById('drop-zone')).outlineStyle")
    assert outline == "solid", "the focused file chooser does not show focus on its drop zone"


@pytest.mark.slow
def test_api_key_is_asked_for_and_sent(browser: webdriver.Chrome, keyed_server_url: str, tmp_path: Path) -> None:
    photo = tmp_path / "landscape.jpg"
    photo.write_bytes(photo_jpeg())
    answer = predict_with_api(keyed_server_url, photo.name, photo.read_bytes(), {"Authorization": f"Bearer {API_KEY}"})
    open_page(browser, keyed_server_url)

    browser.find_element(By.ID, "file-input").send_keys(str(photo))
    title, _ = wait_for_error(browser)
    assert title == "The API key is missing or wrong."
    key_field = browser.find_element(By.ID, "api-key")
    assert browser.switch_to.active_element == key_field
    key_field.send_keys(API_KEY)
    browser.find_element(By.ID, "classify").click()

    assert wait_for_bars(browser) == expected_bars(answer.json())
    assert not browser.find_element(By.ID, "error").is_displayed()

"""The chat page at / in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium):
type a message, watch the reply stream in, read the stats line, press stop, start a new chat.

Skips when no Chromium or chromedriver is installed (CI installs them: see .ci/run). The page loads
nothing from the network; the browser runs with every other host unreachable to prove it.
"""
import os
import shutil
import time

import httpx
import pytest

from serve_support import running, write_model

webdriver = pytest.importorskip("selenium.webdriver")
os.environ.setdefault("SE_AVOID_STATS", "true")          # selenium manager: no stats, never a download

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
if not (os.path.exists(CHROMEDRIVER) and CHROMIUM):
    pytest.skip("no chromium/chromedriver installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory, vocab_dir):
    # n_embd 128: ~2 ms a token on one thread, so a long reply streams for seconds (time to press stop)
    with running(write_model(tmp_path_factory, vocab_dir, n_embd=128, name="gpt2-page"), n_slots=2) as s:
        yield s


@pytest.fixture(scope="module")
def browser(server):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900", "--no-first-run", "--disable-extensions",
                # offline: any host but this server's is unreachable
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "--proxy-server=http://0.0.0.0:1",
                "--proxy-bypass-list=127.0.0.1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, cond, timeout=30):
    return WebDriverWait(driver, timeout, poll_frequency=0.02).until(lambda d: cond(d))


def open_page(browser, server):
    browser.get(server.url + "/")
    wait(browser, lambda d: d.find_element(By.ID, "model").text not in ("", "connecting\u2026"))


def replies(browser):
    return browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")


def set_value(browser, element_id, value):
    el = browser.find_element(By.ID, element_id)
    el.clear()
    el.send_keys(str(value))


def test_streamed_reply_with_stats(browser, server):
    open_page(browser, server)
    model_id = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
    assert model_id in browser.find_element(By.ID, "model").text
    set_value(browser, "max-tokens", 12)
    box = browser.find_element(By.ID, "input")
    box.send_keys("Hello, who are you?\n")                 # Enter sends
    user = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.user"))
    assert user[-1].text == "Hello, who are you?"
    stats = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant .stats"))
    line = stats[-1].text
    reply = replies(browser)[-1].find_element(By.CSS_SELECTOR, ".text").text
    assert reply.strip()
    assert "prompt tokens" in line and "tokens/s" in line and "finish:" in line
    n = int(line.split(" reply token")[0].split("\u00b7")[-1].strip())
    assert 1 <= n <= 12
    assert browser.find_element(By.ID, "send").is_displayed()
    assert not browser.find_element(By.ID, "stop").is_displayed()
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_stop_button_stops_the_stream(browser, server):
    open_page(browser, server)
    set_value(browser, "max-tokens", 800)
    set_value(browser, "temperature", 1)
    browser.find_element(By.ID, "input").send_keys("Tell me everything you know.")
    browser.find_element(By.ID, "send").click()
    stop = browser.find_element(By.ID, "stop")
    wait(browser, lambda d: stop.is_displayed())
    bubble = wait(browser, lambda d: replies(d))[-1]
    text = bubble.find_element(By.CSS_SELECTOR, ".text")
    first = wait(browser, lambda d: len(text.text) > 0 and len(text.text))
    grown = wait(browser, lambda d: len(text.text) > first + 10 and len(text.text))   # it streams in
    assert grown > first
    stop.click()
    stats = wait(browser, lambda d: bubble.find_elements(By.CSS_SELECTOR, ".stats"))
    assert "stopped" in stats[0].text
    shown = text.text
    time.sleep(0.3)
    assert text.text == shown                               # nothing more arrives after stop
    assert browser.find_element(By.ID, "send").is_displayed()
    # the server cancelled the generation: its slot is free again
    deadline = time.monotonic() + 10
    while httpx.get(server.url + "/health").json()["slots_processing"]:
        assert time.monotonic() < deadline, "the stopped reply still holds a slot"
        time.sleep(0.05)
    tokens = int(stats[0].text.split(" reply token")[0].split("\u00b7")[-1].strip())
    assert 0 < tokens < 800


def test_new_chat_clears_the_conversation(browser, server):
    open_page(browser, server)
    set_value(browser, "max-tokens", 3)
    browser.find_element(By.ID, "input").send_keys("First\n")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant .stats"))
    assert len(browser.find_elements(By.CSS_SELECTOR, ".msg")) == 2
    browser.find_element(By.ID, "new-chat").click()
    assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
    # the next message starts a fresh conversation: the server sees one user message
    assert browser.execute_script("return state.messages.length") == 0
    browser.find_element(By.ID, "input").send_keys("Second\n")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant .stats"))
    assert browser.execute_script("return state.messages.map(m => m.role)") == ["user", "assistant"]

"""The web page in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium):
type a prompt, watch the answer stream in, vote in the arena, find the vote on disk.

Skipped, with the reason, where Chromium, its driver or selenium is missing; .ci/run installs them.
Set MINI_QWEN_SCREENSHOT=path.png to also keep the arena screenshot (docs/images/serve_arena.png
was taken this way).
"""

import os
import shutil
import time

import pyarrow.parquet as pq
import pytest
from test_serve import running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium chromium-driver)"),
    pytest.mark.skipif(DRIVER is None, reason="no chromedriver installed (apt-get install chromium-driver)"),
    pytest.mark.slow,
]


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,860", "--disable-extensions", "--no-first-run"):
        options.add_argument(flag)
    # The Debian driver matches the Debian browser: Selenium Manager must not try to download one.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_chat_streams_and_arena_vote_lands_on_disk(browser, tiny_checkpoint, tmp_path):
    from selenium.webdriver.common.by import By

    from mini_qwen.serve.app import create_app
    from mini_qwen.serve.engine import load_slots

    slots = load_slots([f"sft={tiny_checkpoint}", f"dpo={tiny_checkpoint}"], log=lambda *a: None)
    votes_dir = tmp_path / "votes"
    with running_server(create_app(slots, votes_dir)) as url:
        browser.get(url + "/")
        find = browser.find_element
        wait_for(lambda: len(find(By.ID, "model").find_elements(By.TAG_NAME, "option")) == 2, 20, "the model list")

        # chat: the answer bubble must be updated piece by piece (streamed), not filled once at the end
        max_tokens = find(By.ID, "max_tokens")
        max_tokens.clear()
        max_tokens.send_keys("48")
        browser.execute_script("""
            window.updates = 0;
            new MutationObserver(() => { window.updates += 1; })
                .observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
        """)
        find(By.ID, "prompt").send_keys("李白是谁？")
        find(By.ID, "send").click()
        bubble = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".msg.assistant.done"), 60, "the answer")[0]
        assert "error" not in bubble.get_attribute("class"), bubble.text
        assert find(By.CSS_SELECTOR, ".msg.user").text == "李白是谁？"
        assert len(bubble.text.split("\n")[0]) > 0 and "sft" in bubble.text  # answer + its meta line
        assert browser.execute_script("return window.updates") >= 5  # many partial updates: it streamed

        # arena: two hidden models, vote A, names revealed, the pair written to votes.parquet
        find(By.ID, "mode-arena").click()
        find(By.ID, "arena-prompt").send_keys("tell me a story")
        find(By.ID, "arena-start").click()
        wait_for(lambda: find(By.ID, "vote-a").is_enabled(), 90, "both arena answers")
        assert find(By.ID, "name-a").text == "Model A" and find(By.ID, "name-b").text == "Model B"
        shown_a = find(By.ID, "answer-a").text
        assert shown_a and find(By.ID, "answer-b").text
        find(By.ID, "vote-a").click()
        result = wait_for(lambda: "recorded" in find(By.ID, "arena-result").text and find(By.ID, "arena-result"),
                          20, "the vote confirmation")
        assert "1 preference pair" in result.text
        assert find(By.ID, "name-a").text.split(": ")[1] in ("sft", "dpo")
        shot = tmp_path / "arena.png"
        browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("MINI_QWEN_SCREENSHOT"):
            shutil.copy(shot, os.environ["MINI_QWEN_SCREENSHOT"])

    rows = pq.read_table(votes_dir / "votes.parquet").to_pylist()
    assert len(rows) == 1 and rows[0]["prompt"] == "tell me a story"
    chosen = rows[0]["chosen"][1]
    assert chosen["role"] == "assistant" and chosen["content"].split() == shown_a.split()  # the answer shown as A
    assert not (votes_dir / "ties.log").exists()

"""The chat page at / in a real headless browser (Debian's chromium through its chromedriver): paste a
document, ask, watch the answer stream, see the speed line; the follow-up reuses the document's KV."""

import os
import shutil
import tempfile

import pytest

DOC = ("Orchard diary. " + "The pears ripened slowly along the south wall. " * 30
       + "The gardener's dog is called Biscuit. " + "Wasps found the fallen fruit. " * 30)
WAIT_S = 300


def _driver():
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        if os.environ.get("CI"):
            pytest.fail("chromium / chromedriver missing: .ci/run installs them (apt-get install chromium chromium-driver)")
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="offload-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)  # no driver download
    return driver, profile


@pytest.fixture(scope="module")
def browser():
    driver, profile = _driver()
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _ask(browser, question):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    n = len(browser.find_elements(By.CSS_SELECTOR, ".turn.assistant"))
    browser.execute_script("document.getElementById('speed').textContent = ''")
    browser.find_element(By.ID, "question").send_keys(question)
    browser.find_element(By.ID, "send").click()
    wait = WebDriverWait(browser, WAIT_S)
    wait.until(lambda d: "tok/s" in d.find_element(By.ID, "speed").text)
    answers = browser.find_elements(By.CSS_SELECTOR, ".turn.assistant")
    assert len(answers) == n + 1 and not browser.find_elements(By.CSS_SELECTOR, ".turn.error")
    return answers[-1].text, browser.find_element(By.ID, "speed")


def test_page_streams_answers_and_reuses_the_document(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    assert browser.title == "offload"
    browser.execute_script("const d = document.getElementById('doc'); d.value = arguments[0];"
                           "d.dispatchEvent(new Event('input'));", DOC)  # a paste
    assert "characters" in browser.find_element(By.ID, "docinfo").text
    browser.find_element(By.ID, "maxtok").clear()
    browser.find_element(By.ID, "maxtok").send_keys("12")
    first, speed = _ask(browser, "What is the dog called?")
    assert first.strip() and "prompt" in speed.text and int(speed.get_attribute("data-cached")) == 0
    second, speed = _ask(browser, "What ripened along the wall?")
    assert second.strip() and int(speed.get_attribute("data-cached")) > 300  # the document was not processed again
    assert "reused" in speed.text
    logs = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert logs == []  # no blocked resource, no script error

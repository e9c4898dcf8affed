"""The web page in a real browser: headless Chromium (Debian's chromium and
chromium-driver; `make test` installs them when missing) asks a question and sees the
streamed answer, its citations and the eval-report page."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from _serving import FakeChat, running_app

from embedrag import Encoder
from embedrag.engine.data.documents import Document
from embedrag.engine.retrieval.store import build_index
from embedrag.engine.serve import ServeConfig

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM and CHROMEDRIVER, "Chromium and ChromeDriver are needed: bash scripts/install_browser.sh"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # The machine has no network: no background connections, no first-run or sync.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-quic", "--window-size=1200,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page_db(tiny_bert, tmp_path_factory):
    db = tmp_path_factory.mktemp("page") / "db"
    documents = [
        Document(id="market", text="The night market sells beef noodle soup. It opens at six in the evening.",
                 title="Night market", source="guide.pdf", metadata={"page": 3}),
        Document(id="shop", text="The corner shop on Yongkang Street serves beef noodles all day.",
                 title="Corner shop", source="guide.pdf", metadata={"page": 7}),
        Document(id="tea", text="Oolong tea is brewed at ninety degrees for three minutes.",
                 title="Tea", source="tea.docx", metadata={"heading_path": "Brewing > Oolong"}),
    ]
    build_index(documents, Encoder.load(tiny_bert, device="cpu"), db=db, chunk_size=0)
    return db


def _screenshot(driver, name: str) -> None:
    folder = os.environ.get("EMBEDRAG_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def test_the_page_streams_an_answer_with_citations_that_link_to_passages(browser, page_db):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    pieces = ["Beef noodles are sold at ", "the night market [1]", " and all day at the corner shop [2]."]
    with FakeChat(pieces=pieces, delay=0.05) as chat, running_app(ServeConfig(
            db=str(page_db), llm="openai", llm_base_url=chat.url, llm_model="fake", device="cpu")) as (url, _):
        browser.get(url + "/")
        wait = WebDriverWait(browser, 30)
        browser.find_element(By.ID, "question").send_keys("Where can I eat beef noodles?")
        browser.find_element(By.ID, "k").clear()
        browser.find_element(By.ID, "k").send_keys("3")
        browser.find_element(By.CSS_SELECTOR, "input[name=mode][value=hybrid]").click()
        browser.find_element(By.ID, "ask-button").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#citations li")) == 2)

        answer = browser.find_element(By.ID, "answer")
        assert answer.text == "".join(pieces)
        links = answer.find_elements(By.CSS_SELECTOR, "a.cite")
        assert [a.text for a in links] == ["1", "2"]
        passages = browser.find_elements(By.CSS_SELECTOR, "#passages li")
        assert len(passages) == 3
        citations = browser.find_elements(By.CSS_SELECTOR, "#citations li")
        first_passage_title = passages[0].find_element(By.TAG_NAME, "strong").text
        assert first_passage_title in citations[0].text
        assert any("guide.pdf p. " in c.text for c in citations)
        assert chat.requests[-1]["body"]["stream"] is True
        assert "Where can I eat beef noodles?" in chat.requests[-1]["body"]["messages"][-1]["content"]

        links[1].click()  # a citation jumps to its passage
        wait.until(lambda d: d.current_url.endswith("#passage-2"))
        assert browser.execute_script("return document.querySelector(':target').id") == "passage-2"
        assert not browser.find_element(By.ID, "error").is_displayed()
        _screenshot(browser, "ask.png")
        wait.until(seen.text_to_be_present_in_element((By.ID, "info"), "3 chunks"))


def test_the_report_page_draws_the_eval_report_as_a_table_and_chart(browser, page_db, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def model(name, ndcg, gain=None):
        entry = {"name": name, "model": name, "metrics": {"ndcg@10": ndcg, "recall@10": ndcg + 0.1, "hit@1": ndcg - 0.1}}
        if gain is not None:
            entry["significance_vs_baseline"] = {
                metric: {"gain": gain, "p_permutation": 0.0123, "wins": 40, "ties": 200, "losses": 10}
                for metric in entry["metrics"]}
        return entry

    report = {"embedrag_version": "test", "baseline": "base", "test_set": {"name": "scifact", "queries": 300,
                                                                           "corpus": 5183},
              "models": [model("base", 0.6451), model("tuned", 0.7169, 0.0718)]}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    with running_app(ServeConfig(db=str(page_db), report=str(path), device="cpu")) as (url, _):
        browser.get(url + "/report")
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "report").is_displayed())
        rows = browser.find_elements(By.CSS_SELECTOR, "#metrics tbody tr")
        assert [r.find_element(By.TAG_NAME, "th").text for r in rows] == ["base (baseline)", "tuned"]
        assert "0.7169" in rows[1].text and "+0.0718 p=0.012" in rows[1].text and "W/T/L 40/200/10" in rows[1].text
        bars = browser.find_elements(By.CSS_SELECTOR, "#chart svg rect")
        assert len(bars) == 2 * 3  # one bar per model and metric
        heights = {b.find_element(By.TAG_NAME, "title").get_attribute("textContent"): float(b.get_attribute("height"))
                   for b in bars}
        assert heights["tuned ndcg@10 0.7169"] > heights["base ndcg@10 0.6451"]
        _screenshot(browser, "report.png")

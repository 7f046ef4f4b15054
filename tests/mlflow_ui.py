"""The MLflow UI as a user sees it, in a real headless browser (Debian's chromium and chromedriver, driven by
Selenium; nothing downloads a browser): an MLflow server on a store, then the experiment's runs page, a run's
page and the compare view, each read back as text and kept as a screenshot.

    python tests/mlflow_ui.py STORE.db EXPERIMENT OUT_DIR     # screenshots of a real store (docs/mlflow-*.png)

tests/test_mlflow_ui.py asserts on what `look` returns for the tiny sweep's store.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ML_VIEW = "workflowType=machine_learning"  # MLflow 3.17's UI opens every experiment as GenAI without it


def missing() -> list[str]:
    """What this machine lacks to run the check (none: it can run)."""
    out = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        out.append("selenium (pip install -e '.[test]')")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: Path, port: int, artifacts: Path | None = None) -> subprocess.Popen:
    """`mlflow server` on the SQLite store `store` at 127.0.0.1:`port` (its output in `<store>.server.log`),
    once it answers."""
    log = Path(store).with_suffix(".server.log")
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", f"sqlite:///{Path(store).resolve()}"]
    cmd += ["--artifacts-destination", str(artifacts)] if artifacts else []
    proc = subprocess.Popen(cmd, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240  # its imports take a minute on a busy 2-core box
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                stop_server(proc)
                raise RuntimeError(f"mlflow server on {store} did not answer:\n{log.read_text()[-2000:]}") from None
            time.sleep(0.5)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
    proc.wait(30)


@contextmanager
def server(store: Path):
    """`mlflow server` on the SQLite store `store`, loopback only, while the block runs; yields its URL."""
    port = free_port()
    proc = start_server(store, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


@contextmanager
def browser(width: int = 1700, height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for a browser or a driver to download
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _page(driver, url: str, needle: str, shot: Path, timeout_s: float = 60) -> str:
    """Open `url`, wait until its text holds `needle`, close the assistant's side panel, keep a screenshot;
    the page's text."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    deadline, text = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        text = driver.find_element(By.TAG_NAME, "body").text
        if needle in text:
            break
        time.sleep(0.5)
    for close in driver.find_elements(By.CSS_SELECTOR, "[aria-label='Close']"):  # MLflow Assistant's panel
        if close.is_displayed():
            close.click()
    time.sleep(1.5)  # charts and column widths settle
    shot.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(shot))
    return driver.find_element(By.TAG_NAME, "body").text


def show_columns(driver, names: list[str]) -> None:
    """Add metric columns to the runs table, as a user does (Columns -> search -> tick)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    for name in names:
        [b for b in driver.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Columns"][0].click()
        time.sleep(1)
        box = [
            i
            for i in driver.find_elements(By.CSS_SELECTOR, "input")
            if i.get_attribute("placeholder") == "Search columns"
        ]
        box[0].clear()
        box[0].send_keys(name)
        time.sleep(1)
        rows = [
            e
            for e in driver.find_elements(
                By.XPATH, "//*[@role='treeitem' or @role='option' or @role='menuitemcheckbox']"
            )
            if e.is_displayed() and e.text.strip() == name
        ]
        if not rows:  # the row holds the name split around the search's highlight: match its full text
            rows = [
                e.find_element(By.XPATH, "./..")
                for e in driver.find_elements(By.XPATH, "//strong")
                if e.is_displayed() and e.find_element(By.XPATH, "./..").text.strip() == name
            ]
        rows[0].click()
        box[0].send_keys(Keys.ESCAPE)
        time.sleep(1)


def look(url: str, experiment: str, out: Path, metric: str = "augmented.verification_accuracy") -> dict:
    """The experiment's pages as text: {"experiment_id", "tags", "runs" (names -> ids), "runs_page", "run_page",
    "compare_page", "shots"}. The runs page sorted by `metric` (a flat list: the trials beside their parent)."""
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By

    mc = MlflowClient(url)
    exp = mc.get_experiment_by_name(experiment)
    runs = {r.info.run_name: r.info.run_id for r in mc.search_runs([exp.experiment_id], max_results=500)}
    trials = mc.search_runs([exp.experiment_id], f"metrics.`{metric}` > -1", max_results=500)
    best = max(trials, key=lambda r: r.data.metrics[metric])
    base = f"{url}/#/experiments/{exp.experiment_id}"
    by_metric = f"orderByKey={quote(f'metrics.`{metric}`')}&orderByAsc=false"
    shots = {k: Path(out) / f"mlflow-{k}.png" for k in ("runs", "run", "compare")}
    with browser() as driver:
        _page(driver, f"{base}/runs?{ML_VIEW}&{by_metric}", best.info.run_name, shots["runs"])
        show_columns(driver, [metric, metric.replace("augmented.", "delta.")])
        driver.save_screenshot(str(shots["runs"]))
        runs_page = driver.find_element(By.TAG_NAME, "body").text
        run_page = _page(driver, f"{base}/runs/{best.info.run_id}?{ML_VIEW}", metric, shots["run"])
        ids = quote(str([r.info.run_id for r in trials]).replace("'", '"'))
        compare = (
            f"{url}/#/compare-runs?runs={ids}&experiments={quote(str([exp.experiment_id]).replace(chr(39), chr(34)))}"
        )
        compare_page = _page(driver, f"{compare}&{ML_VIEW}", metric, shots["compare"])
    return {
        "experiment_id": exp.experiment_id,
        "tags": exp.tags,
        "runs": runs,
        "runs_page": runs_page,
        "run_page": run_page,
        "compare_page": compare_page,
        "shots": shots,
    }


if __name__ == "__main__":
    store, experiment, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    if need := missing():
        sys.exit(f"missing: {', '.join(need)} (apt-get install chromium chromium-driver)")
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "mlflow-ui-store.db"
    shutil.copy(store, tmp)  # the server may migrate the schema: never on the user's own store
    with server(tmp) as url:
        seen = look(url, experiment, out)
    print({k: str(v) for k, v in seen["shots"].items()})

#!/usr/bin/env python3
"""Browser tests of the web dashboard: what a person sees, in headless Chromium.

    scripts/browser_tests.py --metafora target/release/metafora --out /tmp/ui-shots

Starts `metafora serve` twice on free loopback ports (fresh data directory and database each,
`--allow-path tests/fixtures`; the second with `--api-key`), drives the pages with selenium 4,
the system chromium and chromedriver, and checks the DOM:

  1. train  — a job created through the form on the tiny fixture shows its progress bar and the
              validation chart growing live, then per-label bars (base vs fine-tuned) for METAPHOR;
  2. detect — the playground highlights `suau` in "Va parlar amb un to suau." with its score;
  3. field-error — learning rate -1 shows the API's 422 message under the learning-rate input;
  4. api-key — the page asks for the key, says so when it is wrong, and loads with the right one;
  5. narrow — at 390 px the pages have no horizontal scroll;
  6. keyboard — Tab reaches the playground's text box and button with a visible focus ring;
  7. reconnect — a job page keeps following its job across a server restart (Last-Event-ID).

A screenshot per scenario goes to --out (with the server logs); a summary is printed and the
exit status is non-zero when anything failed, chromium/chromedriver/selenium missing included.
Needs: apt-get install chromium chromium-driver, and selenium 4 in the Python that runs this
(CI: ~/.cache/metafora-ci/venv/bin/pip install selenium; then run it with that venv's python).
The binary serves the dashboard embedded at build time; METAFORA_UI_DIR (or --ui-dir) serves
the files of a folder instead, for checking pages without rebuilding.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
CHECKPOINT = FIXTURES / "tiny-roberta-base"
DATASET = FIXTURES / "data" / "synthetic-small"
API_KEY = "browser-test-key"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


class Failure(Exception):
    """A check failed: the message says what the page showed instead."""


def check(cond, message):
    if not cond:
        raise Failure(message)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`metafora serve` on a free port with its own data directory and database."""

    def __init__(self, binary, root, out, name, api_key=None, ui_dir=None):
        self.binary, self.name, self.api_key = binary, name, api_key
        self.cleanup = []  # run after each scenario (a failed one may leave a job training)
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.log_path = out / f"server-{name}.log"
        self.log_path.write_bytes(b"")
        self.env = dict(os.environ)
        if ui_dir:
            self.env["METAFORA_UI_DIR"] = str(ui_dir)
        for attempt in range(3):  # the free port may be taken before the server binds it
            self.port = free_port()
            self.base = f"http://127.0.0.1:{self.port}"
            if self.start():
                return
            if attempt == 2 or "in use" not in self.log_tail(20).lower():
                raise Failure(f"server {name} did not start:\n{self.log_tail()}")

    def start(self):
        """Starts the server on self.port; whether it answered /health."""
        cmd = [str(self.binary), "serve", "--bind", f"127.0.0.1:{self.port}",
               "--data-dir", str(self.dir / "data"),
               "--database-url", f"sqlite://{self.dir / 'metafora.db'}",
               "--allow-path", str(FIXTURES)]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, cwd=self.dir, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self.wait_ready()

    def restart(self):
        """SIGTERM (the running job is checkpointed and queued again), then the same port again."""
        self.stop()
        for _ in range(20):  # the port is free again at once, but give a slow machine a moment
            if self.start():
                return
            time.sleep(0.5)
        raise Failure(f"server {self.name} did not start again:\n{self.log_tail()}")

    def wait_ready(self, timeout=120):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=2) as r:
                    if r.status == 200:
                        return True
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.25)
        return False

    def api(self, method, path, body=None):
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
        if body is not None:
            req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                text = r.read().decode()
                return r.status, json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read().decode() or "null")

    def log_tail(self, lines=60):
        try:
            text = re.sub(r"\x1b\[[0-9;]*m", "", self.log_path.read_text(errors="replace"))
            return "\n".join(text.splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class Browser:
    """Headless chromium through chromedriver, with waits that explain what they waited for."""

    def __init__(self, chromium, chromedriver, profile):
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service

        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900"]:
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        for attempt in range(3):  # chromium now and then exits while starting; try again
            try:
                self.d = webdriver.Chrome(service=Service(chromedriver), options=opts)
                break
            except WebDriverException as e:
                if attempt == 2:
                    raise Failure(f"chromium did not start through {chromedriver}: {e.msg}") from e
                time.sleep(2)
        self.d.set_window_size(1280, 900)
        self.console = []

    def wait(self, what, fn, timeout=20, poll=0.1):
        """Waits until fn() is truthy and returns it; fails naming `what` (and the last check
        that failed). The page re-renders as data arrives: elements may go stale meanwhile."""
        from selenium.common.exceptions import StaleElementReferenceException, NoSuchElementException
        end = time.monotonic() + timeout
        last = None
        while True:
            try:
                value = fn()
                if value:
                    return value
            except (StaleElementReferenceException, NoSuchElementException, Failure) as e:
                last = e
            if time.monotonic() > end:
                why = f" (last: {str(last).splitlines()[0]})" if last else ""
                raise Failure(f"timed out after {timeout} s waiting for {what}{why}; "
                              f"page {self.d.current_url!r}, h1 {self.text('h1')!r}")
            time.sleep(poll)

    def q(self, css):
        from selenium.webdriver.common.by import By
        found = self.d.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found else None

    def qa(self, css):
        from selenium.webdriver.common.by import By
        return self.d.find_elements(By.CSS_SELECTOR, css)

    def text(self, css):
        """The element's visible text, read in one step (no stale reference in between)."""
        return self.js("const e = document.querySelector(arguments[0]); return e ? e.innerText : null", css)

    def by_label(self, label):
        """The control a visible <label> with this exact text is for (so labels must be wired up)."""
        found = self.js("""
            const l = [...document.querySelectorAll('label')]
              .find(l => l.innerText.trim() === arguments[0] && l.getClientRects().length);
            if (!l) return 'no visible label';
            return document.getElementById(l.htmlFor) || 'no control for the label';""", label)
        check(not isinstance(found, str), f"{found} {label!r}")
        return found

    def fill(self, label, value):
        el = self.by_label(label)
        el.clear()
        el.send_keys(value)
        return el

    def button(self, text):
        found = self.js("""return [...document.querySelectorAll('button')]
            .find(b => b.innerText.trim() === arguments[0] && b.getClientRects().length) || null""", text)
        check(found, f"no visible button {text!r}")
        return found

    def js(self, script, *args):
        return self.d.execute_script(script, *args)

    def screenshot(self, path):
        """The whole page, not only the window (falls back to the window)."""
        import base64
        try:
            size = self.d.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
            shot = self.d.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 10000), "scale": 1}})
            Path(path).write_bytes(base64.b64decode(shot["data"]))
        except Exception:  # noqa: BLE001
            self.d.save_screenshot(str(path))

    def drain_console(self):
        entries = self.d.get_log("browser")
        self.console += entries
        return entries


# --------------------------------------------------------------------------- scenarios

def scenario_train(b, srv, key_srv, out):
    """A job made with the form: live progress and epoch points, then base vs fine-tuned bars."""
    # The worker runs one job at a time: a long job in front keeps ours queued until the page
    # follows it, so what the page shows next arrives live rather than as a replay.
    status, blocker = srv.api("POST", "/v1/jobs", {
        "model": {"checkpoint": str(CHECKPOINT)}, "dataset": {"path": str(FIXTURES / "data" / "synthetic")},
        "training": {"num_train_epochs": 1000}})
    check(status == 201, f"creating the job in front failed: {status} {blocker}")
    srv.cleanup.append(lambda: srv.api("POST", f"/v1/jobs/{blocker['id']}/cancel"))

    b.d.get(srv.base + "/ui/jobs")
    b.wait("the new-job form", lambda: b.q("#job-form"))
    b.fill("Model checkpoint", str(CHECKPOINT))
    b.fill("Dataset folder", str(DATASET))
    b.fill("Learning rate", "3e-3")
    b.fill("Epochs", "8")
    b.button("Start job").click()
    url = b.wait("the job page after submitting", lambda: re.search(f"/ui/jobs/({UUID})$", b.d.current_url))
    job_id = url.group(1)
    b.wait("the h1 of the job page", lambda: (b.text("h1") or "").startswith("Job "))
    b.wait("the job shown as queued", lambda: "queued" in (b.text("h1 .badge") or ""))
    b.wait("the live-updates indicator", lambda: b.q('#live[data-state="live"]'))

    # Record every change of what the page shows: progress bar and epoch-chart points.
    b.js("""
      const sample = () => {
        const bar = document.querySelector('#job-progress');
        window.__rec.push({t: performance.now(), value: bar ? bar.value : null, max: bar ? bar.max : null,
          points: document.querySelectorAll('#epoch-chart circle.pt').length,
          status: (document.querySelector('h1 .badge') || {}).textContent});
      };
      window.__rec = [];
      sample();
      new MutationObserver(sample).observe(document.querySelector('#app'),
        {subtree: true, childList: true, attributes: true, characterData: true});
    """)
    before = b.js("return window.__rec[0]")
    check(before["points"] == 0, f"the epoch chart had {before['points']} points before training")
    check(before["value"] == 0, f"the progress bar was at {before['value']} before training")

    status, _ = srv.api("POST", f"/v1/jobs/{blocker['id']}/cancel")
    check(status in (200, 202), f"cancelling the job in front failed: {status}")
    b.wait("the job to succeed (status badge)", lambda: "succeeded" in (b.text("h1 .badge") or ""), timeout=180)
    b.wait("the final render", lambda: b.js("return document.querySelectorAll('#epoch-chart circle.pt').length") == 24)
    rec = b.js("return window.__rec")
    after = rec[-1]

    fractions = [r["value"] / r["max"] for r in rec if r["max"]]
    check(all(x <= y + 1e-9 for x, y in zip(fractions, fractions[1:])), f"the progress bar went backwards: {fractions}")
    distinct = sorted(set(round(f, 4) for f in fractions))
    check(len([f for f in distinct if 0 < f < 1]) >= 2,
          f"the progress bar did not move through intermediate values while training: {distinct}")
    check(distinct[-1] == 1, f"the progress bar did not reach the end: {distinct}")
    counts = [r["points"] for r in rec]
    check(all(x <= y for x, y in zip(counts, counts[1:])), f"epoch points disappeared: {counts}")
    seen = sorted(set(counts))
    check(len([c for c in seen if 0 < c < 24]) >= 2,
          f"the epoch chart did not gain points one epoch at a time: counts seen {seen}")
    times = [r["t"] for r in rec if r["points"] in seen[1:]]
    spread = (max(times) - min(times)) / 1000 if times else 0
    print(f"    progress values seen {distinct}; epoch points seen {seen} over {spread:.2f} s; "
          f"before {before['points']} points, after {after['points']}")

    # Open the result from the list, as a person would.
    b.d.find_element("css selector", 'nav a[href="/ui/jobs"]').click()
    b.wait("the job's row in the list", lambda: b.q(f'tr[data-id="{job_id}"]'))
    b.wait("the row to say succeeded", lambda: b.text(f'tr[data-id="{job_id}"] .badge') == "succeeded")
    b.wait("a full progress bar in the list", lambda: b.js(
        "const p = document.querySelector(arguments[0]); return p && p.value === p.max", f'tr[data-id="{job_id}"] progress'))
    b.wait("the link to the job", lambda: b.q(f'tr[data-id="{job_id}"] a[href="/ui/jobs/{job_id}"]')).click()
    b.wait("the job page", lambda: b.d.current_url.endswith(f"/ui/jobs/{job_id}"))
    for series in ("base", "finetuned"):
        b.wait(f"a displayed {series} bar for METAPHOR", lambda: (e := b.q(
            f'#label-bars rect[data-label="METAPHOR"][data-series="{series}"]')) and e.is_displayed())
    chart_text = b.wait("the per-label chart to name the label and both models", lambda: (
        (x := b.text("#label-bars") or "") and "METAPHOR" in x and "base" in x and "fine-tuned" in x and x))
    headline = b.wait("the base → fine-tuned F1 headline", lambda: re.search(
        r"Test F1: base \d\.\d{3} → fine-tuned \d\.\d{3}[^\n]*", b.text("#results") or ""))
    b.wait("the best epoch marked on the epoch chart", lambda: b.q("#epoch-chart .mark.best"))
    # The fine-tuned model learnt something: its bar is wider than the base model's.
    width = lambda series: float(b.q(
        f'#label-bars rect[data-label="METAPHOR"][data-series="{series}"]').get_attribute("width") or 0)
    check(width("finetuned") > width("base") and width("finetuned") > 5,
          f"fine-tuned bar {width('finetuned')} px vs base {width('base')} px")
    print(f"    {headline.group(0)}; chart: {' / '.join(chart_text.split())}")
    b.js("document.querySelector('#results').scrollIntoView()")


def scenario_detect(b, srv, key_srv, out):
    """The playground highlights the metaphor with its score."""
    b.d.get(srv.base + "/ui/detect")
    model = b.wait("the model list", lambda: b.by_label("Model"))
    b.wait("the default model selected", lambda: model.get_attribute("value") == "default")
    b.fill("Text", "Va parlar amb un to suau.")
    b.button("Detect").click()
    marks = b.wait("highlighted words", lambda: b.qa("#detect-result .highlighted mark"))
    words = [m.text for m in marks]
    check("suau" in words, f"`suau` is not highlighted; marks: {words}")
    mark = marks[words.index("suau")]
    title = mark.get_attribute("title") or ""
    score = re.search(r"score (\d\.\d+)", title)
    check(score, f"the mark's title has no score: {title!r}")
    raw = json.loads(b.text("#detect-json"))
    entity = next(e for e in raw["entities"] if e["word"] == "suau")
    check(abs(float(score.group(1)) - entity["score"]) < 0.001,
          f"title score {score.group(1)} differs from the API's {entity['score']}")
    check(b.text("#detect-result .highlighted") == "Va parlar amb un to suau.", "the highlighted text differs from the input")
    # Offsets are code points: a character outside the BMP (two UTF-16 units) must not shift the
    # mark. chromedriver cannot type such characters, so the text is set as a paste would.
    b.js("const t = arguments[0]; t.value = '🙂 ' + t.value; t.dispatchEvent(new Event('input'))", b.by_label("Text"))
    b.button("Detect").click()
    b.wait("the result for the text with an emoji", lambda: "🙂" in (b.text("#detect-result .highlighted") or ""))
    words = [m.text for m in b.qa("#detect-result .highlighted mark")]
    check(words == ["suau"], f"after an emoji the marks are {words}, not ['suau']")


def scenario_field_error(b, srv, key_srv, out):
    """The API's 422 `field` puts its message under the learning-rate input."""
    b.d.get(srv.base + "/ui/jobs")
    b.wait("the new-job form", lambda: b.q("#job-form"))
    b.fill("Model checkpoint", str(CHECKPOINT))
    b.fill("Dataset folder", str(DATASET))
    lr = b.fill("Learning rate", "-1")
    b.button("Start job").click()
    err_id = next(i for i in (lr.get_attribute("aria-describedby") or "").split() if i.endswith("-err"))
    err = b.wait("the learning-rate error", lambda: (e := b.q(f"#{err_id}")) and e.is_displayed() and e.text and e)
    check("learning_rate" in err.text and "> 0" in err.text, f"unexpected error text: {err.text!r}")
    check(lr.get_attribute("aria-invalid") == "true", "the learning-rate input is not marked invalid")
    check(b.js("return arguments[0].parentElement === arguments[1].parentElement", err, lr),
          "the error is not in the learning-rate field")
    gap = err.location["y"] - (lr.location["y"] + lr.size["height"])
    check(0 <= gap <= 60, f"the error is not right under the input (gap {gap}px)")
    check(b.d.current_url.endswith("/ui/jobs"), f"the page navigated away: {b.d.current_url}")
    others = [e.text for e in b.qa(".field-error") if e.is_displayed() and e != err]
    check(not others, f"errors shown on other fields: {others}")


def scenario_api_key(b, srv, key_srv, out):
    """Against --api-key: the key form, a wrong key refused, the right one loads the jobs."""
    b.d.get(key_srv.base + "/ui/jobs")
    key = b.wait("the API key form", lambda: (e := b.q("#api-key")) and e.is_displayed() and e)
    check(b.by_label("API key") == key, "the key input has no label")
    key.send_keys("wrong-key")
    b.button("Use this key").click()
    err = b.wait("the refused-key message", lambda: (e := b.q("#auth-error")) and e.is_displayed() and e)
    check("refused" in err.text, f"unexpected message: {err.text!r}")
    b.screenshot(out / "05-api-key-refused.png")
    b.q("#api-key").send_keys(API_KEY)
    b.button("Use this key").click()
    b.wait("the key form to close", lambda: not b.q("#auth").is_displayed())
    empty = b.wait("the jobs list (empty state)", lambda: (e := b.q("#job-list .empty")) and e.is_displayed() and e)
    check("No jobs yet" in empty.text, f"unexpected empty state: {empty.text!r}")
    check(b.text("h1") == "Jobs", f"h1 is {b.text('h1')!r}")
    check(b.js("return sessionStorage.getItem('metafora.apiKey')") == API_KEY, "the key is not kept in sessionStorage")
    check(b.q("#forget-key").is_displayed(), "no way to forget the key")


def scenario_narrow(b, srv, key_srv, out):
    """390 px wide: no horizontal scroll on the jobs page (and the other pages)."""
    b.d.set_window_size(390, 844)  # main() restores 1280 px after the screenshot
    problems = []
    _, jobs = srv.api("GET", "/v1/jobs?limit=1&status=succeeded")
    job = jobs["jobs"][0]["id"] if jobs["jobs"] else None
    pages = ["/ui/detect", "/ui/models", "/ui/datasets", "/ui/studies"] + ([f"/ui/jobs/{job}"] if job else []) + ["/ui/jobs"]
    for page in pages:
        b.d.get(srv.base + page)
        b.wait(f"{page} to load", lambda: b.text("h1") not in (None, "metafora"))
        if page == "/ui/jobs":
            b.wait("the jobs list rows", lambda: b.qa("#job-list tbody tr") or b.q("#job-list .empty:not([hidden])"))
        if page.startswith("/ui/jobs/"):
            b.wait("the epoch chart", lambda: b.q("#epoch-chart"))
        time.sleep(0.3)
        width, scroll = b.js("return [window.innerWidth, document.scrollingElement.scrollWidth]")
        check(width <= 400, f"the window is {width}px wide, not 390")
        if scroll > width:
            wide = b.js("""return [...document.querySelectorAll('body *')]
                .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
                .slice(0, 5).map(e => e.tagName + (e.id ? '#' + e.id : '') + '.' + e.className)""")
            problems.append(f"{page}: scrollWidth {scroll} > {width} (too wide: {wide})")
    check(not problems, "horizontal scroll at 390 px: " + "; ".join(problems))
    b.js("document.querySelector('#job-list').scrollIntoView()")


def scenario_keyboard(b, srv, key_srv, out):
    """Keyboard only: Tab to the text, type, Tab to Detect, Enter; focus is always visible."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    b.d.get(srv.base + "/ui/detect")
    b.wait("the model list", lambda: b.by_label("Model").get_attribute("value") == "default")
    path = []
    for _ in range(30):
        ActionChains(b.d).send_keys(Keys.TAB).perform()
        el = b.d.switch_to.active_element
        style = b.js("const s = getComputedStyle(arguments[0]); return [s.outlineStyle, s.outlineWidth]", el)
        name = el.tag_name + (f"#{el.get_attribute('id')}" if el.get_attribute("id") else f" {el.text[:20]!r}")
        check(style[0] != "none" and style[1] != "0px", f"no visible focus on {name}: outline {style}")
        path.append(name)
        if el.tag_name == "textarea":
            break
    check(path[-1].startswith("textarea"), f"Tab never reached the text box: {path}")
    ActionChains(b.d).send_keys("Va parlar amb un to suau.").perform()
    for _ in range(10):
        ActionChains(b.d).send_keys(Keys.TAB).perform()
        if b.d.switch_to.active_element.text == "Detect":
            break
    check(b.d.switch_to.active_element.text == "Detect", "Tab never reached the Detect button")
    ActionChains(b.d).send_keys(Keys.ENTER).perform()
    b.wait("`suau` highlighted", lambda: "suau" in [m.text for m in b.qa("#detect-result mark")])
    print(f"    tab order: {' → '.join(path)}")


def scenario_reconnect(b, srv, key_srv, out):
    """The job page follows a job across a server restart (Last-Event-ID): no gap, no repeat."""
    status, job = srv.api("POST", "/v1/jobs", {
        "model": {"checkpoint": str(CHECKPOINT)}, "dataset": {"path": str(DATASET)},
        "training": {"learning_rate": 5e-4, "num_train_epochs": 300}})
    check(status == 201, f"creating the job failed: {status} {job}")
    srv.cleanup.append(lambda: srv.api("POST", f"/v1/jobs/{job['id']}/cancel"))
    epochs = lambda: b.js("""return [...document.querySelectorAll('#epochs tbody tr td:first-child')]
                             .map(td => parseInt(td.innerText, 10))""")
    b.d.get(f"{srv.base}/ui/jobs/{job['id']}")
    b.wait("3 epochs on the page", lambda: len(epochs()) >= 3, timeout=60)
    b.js("""window.__states = []; window.__resumes = [];
      new MutationObserver(() => window.__states.push(document.querySelector('#live').dataset.state))
        .observe(document.querySelector('#live'), {attributes: true});
      const fetch0 = window.fetch;  // note the Last-Event-ID the page sends when it reconnects
      window.fetch = (url, opts) => {
        if (String(url).endsWith('/events')) window.__resumes.push((opts && opts.headers || {})['Last-Event-ID'] || null);
        return fetch0(url, opts);
      };""")
    srv.restart()
    b.wait("the page to say it reconnects", lambda: "reconnecting" in b.js("return window.__states"), timeout=30)
    b.wait("the page to be live again", lambda: b.q('#live[data-state="live"]'), timeout=60)
    seen = len(epochs())
    b.wait("epochs after the restart", lambda: len(epochs()) >= seen + 3, timeout=60)
    rows = epochs()
    check(rows == list(range(1, len(rows) + 1)), f"epochs shown are not 1..n once each: {rows}")
    check("Resumed from" in (b.text(".notes") or ""), f"no resumed note: {b.text('.notes')!r}")
    resumes = b.js("return window.__resumes")
    check(resumes and all(r and r.isdigit() for r in resumes), f"reconnections did not send Last-Event-ID: {resumes}")
    print(f"    states {' → '.join(b.js('return window.__states'))}; Last-Event-ID sent {resumes}; "
          f"{seen} epochs before reconnecting, {len(rows)} after")


def scenario_datasets(b, srv, key_srv, out):
    """Upload a JSONL file through the form; see its sizes, label distribution and sample
    sentences with the labelled words highlighted."""
    b.d.get(srv.base + "/ui/datasets")
    b.wait("the upload form", lambda: b.by_label("File (JSONL or CoNLL)"))
    b.by_label("File (JSONL or CoNLL)").send_keys(str(DATASET / "train.jsonl"))
    b.fill("Name", "synthetic-small train")
    b.fill("Label names", "O, METAPHOR")
    b.button("Upload").click()
    card = b.wait("the uploaded dataset's card", lambda: next(
        (c for c in b.qa("#dataset-list article") if "synthetic-small train" in c.text), None), timeout=30)
    check("METAPHOR" in card.text and "train" in card.text, f"card without labels or splits: {card.text!r}")
    b.wait("the label distribution chart", lambda: card.find_elements("css selector", "svg rect"))
    card.find_element("css selector", "details summary").click()
    marks = b.wait("highlighted words in the samples", lambda: card.find_elements("css selector", ".samples mark"))
    check(all(m.get_attribute("title") == "METAPHOR" for m in marks), "sample marks without their tag")
    print(f"    {len(card.find_elements('css selector', '.samples p'))} sample sentences, "
          f"{len(marks)} labelled words: {[m.text for m in marks][:5]}")
    b.js("arguments[0].scrollIntoView()", card)


SCENARIOS = [
    ("train", scenario_train),
    ("datasets", scenario_datasets),
    ("detect", scenario_detect),
    ("field-error", scenario_field_error),
    ("api-key", scenario_api_key),
    ("narrow", scenario_narrow),
    ("keyboard", scenario_keyboard),
    ("reconnect", scenario_reconnect),  # last: it restarts the server
]


def page_errors(entries):
    """Script errors and CSP violations in the console (failed requests are expected: 401, 422)."""
    return [e["message"] for e in entries if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--metafora", required=True, help="the metafora binary")
    ap.add_argument("--out", required=True, help="folder for screenshots and server logs")
    ap.add_argument("--ui-dir", help="serve the dashboard files from this folder (METAFORA_UI_DIR)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    ap.add_argument("--only", help="comma-separated scenario names")
    args = ap.parse_args()
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop the servers (finally)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    missing = [p for p in (args.chromium, args.chromedriver, args.metafora) if not (Path(p).is_file() and os.access(p, os.X_OK))]
    if missing:
        print(f"FAIL: not found or not executable: {', '.join(missing)} "
              "(apt-get install chromium chromium-driver; build metafora first)", file=sys.stderr)
        return 1
    try:
        import selenium  # noqa: F401
    except ImportError:
        print("FAIL: selenium is not installed (pip install selenium)", file=sys.stderr)
        return 1

    root = Path(tempfile.mkdtemp(prefix="metafora-browser-"))
    servers, browser, results = [], None, []
    try:
        ui_dir = args.ui_dir or os.environ.get("METAFORA_UI_DIR")
        print(f"dashboard files: {ui_dir or 'embedded in the binary'}")
        srv = Server(Path(args.metafora).resolve(), root, out, "open", ui_dir=ui_dir)
        servers.append(srv)
        key_srv = Server(Path(args.metafora).resolve(), root, out, "key", api_key=API_KEY, ui_dir=ui_dir)
        servers.append(key_srv)
        print(f"servers up after {time.monotonic() - started:.1f} s: {srv.base}, {key_srv.base} (with --api-key)")
        browser = Browser(args.chromium, args.chromedriver, root / "profile")
        only = set(args.only.split(",")) if args.only else None
        for i, (name, fn) in enumerate(SCENARIOS, 1):
            if only and name not in only:
                continue
            t0 = time.monotonic()
            print(f"[{i}] {name}: {fn.__doc__.strip()}")
            error = None
            try:
                fn(browser, srv, key_srv, out)
                js_errors = page_errors(browser.drain_console())
                check(not js_errors, f"errors in the browser console: {js_errors}")
            except Exception as e:  # noqa: BLE001 — any exception fails the scenario, with its story
                error = e if isinstance(e, Failure) else Failure(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
            shot = out / f"{i:02d}-{name}.png"
            try:
                browser.screenshot(shot)
            except Exception as e:  # noqa: BLE001
                print(f"    (no screenshot: {e})")
            for s in servers:
                while s.cleanup:
                    s.cleanup.pop()()
            browser.d.set_window_size(1280, 900)
            seconds = time.monotonic() - t0
            results.append((name, error, seconds))
            print(f"    {'PASS' if not error else 'FAIL'} in {seconds:.1f} s, screenshot {shot}")
            if error:
                print(f"    {error}")
                for entry in browser.drain_console()[-20:] or browser.console[-20:]:
                    print(f"    console {entry['level']}: {entry['message'][:300]}")
                for s in servers:
                    print(f"    --- last lines of {s.log_path}:\n{s.log_tail(15)}")
    except Failure as e:
        results.append(("setup", e, 0.0))
        print(f"FAIL setup: {e}")
    finally:
        if browser:
            browser.d.quit()
        for s in servers:
            s.stop()
        shutil.rmtree(root, ignore_errors=True)

    failed = [r for r in results if r[1]]
    print("\nsummary:")
    for name, error, seconds in results:
        print(f"  {'PASS' if not error else 'FAIL'}  {name:12s} {seconds:6.1f} s")
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed in {time.monotonic() - started:.1f} s; screenshots in {out}")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())

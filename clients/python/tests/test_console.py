"""The web console (``GET /``) in a real browser: headless Chromium driven by selenium over
the real server binary. The page must list the topics, tail one live (a frame published with
the CLI shows within a second), publish through its form (the frame is then in the history),
page through history in both directions, and work with auth on (the token from the page URL
or typed into the token field).

Needs selenium, ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (or ``$FRAMECAST_CHROMIUM``
and ``$FRAMECAST_CHROMEDRIVER``); skipped without them. Every wait is bounded. The last page
state is saved to ``<repo>/target/console.png``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, ServerProcess, free_port

# In CI the test command installs selenium, Chromium and ChromeDriver: missing ones fail
# there instead of skipping.
IN_CI = bool(os.environ.get("CI"))
if not IN_CI:
    pytest.importorskip("selenium")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.chrome.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = os.environ.get("FRAMECAST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FRAMECAST_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROME_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1300",
]
SCREENSHOT = REPO_ROOT / "target" / "console.png"
CLI_TIMEOUT = 20.0
#: How soon a frame published with the CLI must show in the tail, from the CLI's return.
LIVE_WITHIN = 1.0
#: The other waits: generous, since the topics table polls once a second.
WAIT = 10.0

pytestmark = pytest.mark.skipif(
    not IN_CI and not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
    reason=f"needs {CHROMIUM} and {CHROMEDRIVER}",
)


# ------------------------------------------------------------------------------ helpers


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile; always quit."""
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in CHROME_ARGS:
        opts.add_argument(arg)
    opts.add_argument(f"--user-data-dir={tmp_path / 'chrome-profile'}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    try:
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(10)
        yield driver
    finally:
        driver.quit()


def cli(binary: Path, *args: str, token: str | None = None, stdin: str | None = None) -> str:
    """Runs the ``framecast`` CLI (bounded) and returns its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "FRAMECAST_TOKEN"}
    if token is not None:
        env["FRAMECAST_TOKEN"] = token
    out = subprocess.run(
        [str(binary), *args],
        input=stdin.encode() if stdin is not None else None,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=CLI_TIMEOUT,
        env=env,
        check=False,
    )
    assert out.returncode == 0, f"framecast {' '.join(args)}: {out.stderr.decode()}"
    return out.stdout.decode()


def publish(
    binary: Path,
    srv: ServerProcess,
    topic: str,
    seq_no: int,
    payload: str,
    token: str | None = None,
) -> None:
    cli(
        binary,
        "publish",
        "--addr",
        f"http://{srv.address}",
        "--topic",
        topic,
        "--seq-no",
        str(seq_no),
        payload,
        token=token,
    )


def history(
    srv: ServerProcess, topic: str, from_seq: int = 0, token: str | None = None
) -> list[Any]:
    """Every frame of ``topic`` with ``seq_no >= from_seq``, read with urllib (not the page)."""
    frames: list[Any] = []
    after = ""
    for _ in range(100):
        q = {"from": str(from_seq), "limit": "1000", **({"after": after} if after else {})}
        path = f"/v1/topics/{urllib.parse.quote(topic)}/history?{urllib.parse.urlencode(q)}"
        req = urllib.request.Request(srv.http_url + path)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=10) as res:
            page = json.load(res)
        frames += page.get("frames", [])
        if not page.get("more"):
            return frames
        after = page["next"]
    raise AssertionError("history did not end within 100 pages")


def delete_topic(srv: ServerProcess, topic: str, token: str | None = None) -> None:
    req = urllib.request.Request(
        f"{srv.http_url}/v1/topics/{urllib.parse.quote(topic)}", method="DELETE"
    )
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as res:
        assert res.status == 204


def tail_status(driver: WebDriver) -> str:
    return js(driver, "return document.getElementById('tail-status').textContent")


def js(driver: WebDriver, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def diagnostics(driver: WebDriver) -> str:
    """What the page shows in its status lines, and the browser's console log."""
    status = js(
        driver,
        """return ['conn', 'topics-status', 'tail-status', 'tail-snapshot', 'pub-result',
                   'hist-status']
             .map(id => id + ': ' + (document.getElementById(id)?.textContent ?? '(none)'))
             .join('\\n')""",
    )
    log = "\n".join(f"{e['level']} {e['message']}" for e in driver.get_log("browser"))
    return f"page status:\n{status}\nbrowser log:\n{log or '(empty)'}"


def wait_for(
    driver: WebDriver,
    what: str,
    cond: Callable[[WebDriver], Any],
    timeout: float = WAIT,
    poll: float = 0.05,
) -> Any:
    """``cond`` until truthy, at most ``timeout`` seconds; fails with what the page shows."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=poll).until(cond)
    except TimeoutException:
        raise AssertionError(f"not within {timeout} s: {what}\n{diagnostics(driver)}") from None


def fill(driver: WebDriver, element_id: str, value: str) -> None:
    el = driver.find_element(By.ID, element_id)
    el.clear()
    el.send_keys(value)


def listed_topics(driver: WebDriver) -> list[str]:
    return js(
        driver,
        "return [...document.querySelectorAll('#topics tbody tr[data-topic]')]"
        ".map(r => r.dataset.topic)",
    )


def metric(driver: WebDriver, topic: str, key: str) -> str | None:
    return js(
        driver,
        'return document.querySelector(`#topics tr[data-topic="${arguments[0]}"] '
        'td[data-metric="${arguments[1]}"] .value`)?.textContent ?? null',
        topic,
        key,
    )


def rows(driver: WebDriver, tbody_id: str) -> list[dict[str, str]]:
    """The rows of a frame table: seq_no, offset, live flag (tail only), payload text."""
    return js(
        driver,
        """return [...document.getElementById(arguments[0]).rows].map(r => ({
             seq: r.dataset.seq, offset: r.dataset.offset,
             live: r.classList.contains('live'),
             payload: r.querySelector('td.payload')?.textContent ?? ''}))""",
        tbody_id,
    )


def pub_result(driver: WebDriver) -> dict[str, str] | None:
    """The publish form's outcome (its data attributes, class and text), once it has one."""
    return js(
        driver,
        """const r = document.getElementById('pub-result');
           return /ok|err/.test(r.className)
             ? {...r.dataset, cls: r.className, text: r.textContent} : null""",
    )


def submit_publish(driver: WebDriver) -> dict[str, str]:
    """Clicks publish and waits for this click's outcome (the previous one is cleared first)."""
    js(driver, "document.getElementById('pub-result').className = 'result'")
    driver.find_element(By.ID, "pub-send").click()
    return wait_for(driver, "the publish outcome", pub_result)


def top_row(driver: WebDriver) -> dict[str, str] | None:
    """The tail's newest row, or None while it is empty."""
    r = rows(driver, "tail")
    return r[0] if r else None


def uncaught_errors(driver: WebDriver) -> list[str]:
    """Script errors in the browser log (failed requests, which the page reports, aside)."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
    ]


# ------------------------------------------------------------------------------ tests


def test_console_lists_tails_publishes_and_pages(
    browser: WebDriver, server: ServerProcess, framecast_bin: Path
) -> None:
    alpha, beta = "console.alpha", "console.beta"
    for seq in range(1, 6):
        publish(framecast_bin, server, alpha, seq, f"alpha-{seq}")
    for seq in range(1, 3):
        publish(framecast_bin, server, beta, seq, f"beta-{seq}")

    # The topics table lists both, with their frame counts.
    browser.get(f"{server.http_url}/")
    assert browser.title == "framecast console"
    wait_for(browser, "both topics listed", lambda d: listed_topics(d) == [alpha, beta])
    wait_for(
        browser,
        "frame counts",
        lambda d: (metric(d, alpha, "frames"), metric(d, beta, "frames")) == ("5", "2"),
    )
    wait_for(
        browser,
        "a sparkline with two samples",
        lambda d: js(
            d,
            "return (document.querySelector('#topics tr[data-topic] td[data-metric=frames] "
            "polyline')?.getAttribute('points') ?? '').split(' ').length >= 2",
        ),
    )

    # Live tail from seq 0: the snapshot, the five replayed frames newest first...
    fill(browser, "tail-topic", alpha)
    fill(browser, "tail-from", "0")
    browser.find_element(By.ID, "tail-start").click()
    wait_for(
        browser,
        "the tail's snapshot",
        lambda d: (
            js(d, "return document.getElementById('tail-snapshot').dataset.snapshotOffset") == "5"
        ),
    )
    wait_for(browser, "the replay", lambda d: len(rows(d, "tail")) == 5)
    replay = rows(browser, "tail")
    assert [r["seq"] for r in replay] == ["5", "4", "3", "2", "1"]
    assert [r["payload"] for r in replay] == [f"alpha-{s}" for s in (5, 4, 3, 2, 1)]
    assert not any(r["live"] for r in replay)

    # ...then a frame published with the CLI shows, live, within a second of its ack.
    live_payload = f"live-{secrets.token_hex(4)}"
    publish(framecast_bin, server, alpha, 6, live_payload)
    acked = time.monotonic()
    wait_for(
        browser,
        f"the CLI's frame in the tail within {LIVE_WITHIN} s",
        lambda d: js(d, "return document.querySelector('#tail tr[data-seq=\"6\"]') !== null"),
        timeout=LIVE_WITHIN,
        poll=0.02,
    )
    shown_after = time.monotonic() - acked
    top = rows(browser, "tail")[0]
    assert (top["seq"], top["offset"], top["live"], top["payload"]) == (
        "6",
        "5",
        True,
        live_payload,
    )
    assert shown_after <= LIVE_WITHIN, f"shown {shown_after:.3f} s after the CLI returned"

    # The publish form: the ack shows, and the frame is stored (read back with urllib).
    fill(browser, "pub-topic", alpha)
    fill(browser, "pub-seq", "7")
    fill(browser, "pub-key", "console-key-1")
    fill(browser, "pub-payload", "from the form ✓")
    result = submit_publish(browser)
    assert "ok" in result["cls"], result["text"]
    assert (result["offset"], result["duplicate"]) == ("6", "false")
    assert "offset 6" in result["text"]
    stored = history(server, alpha, from_seq=7)
    assert [(f["seq_no"], f["offset"], f.get("text")) for f in stored] == [
        ("7", "6", "from the form ✓")
    ]
    # The tail sees it too.
    wait_for(
        browser, "the form's frame in the tail", lambda d: (top_row(d) or {}).get("seq") == "7"
    )

    # A refused publish shows the server's {code, message}.
    fill(browser, "pub-topic", "not a topic!")
    err = submit_publish(browser)
    assert "err" in err["cls"] and err.get("code") == "INVALID_ARGUMENT", err["text"]
    assert "INVALID_ARGUMENT" in err["text"]

    # The same key again (the form has moved on to seq_no 8): the first ack, marked
    # duplicate, and nothing appended.
    fill(browser, "pub-topic", alpha)
    assert browser.find_element(By.ID, "pub-seq").get_attribute("value") == "8"
    dup = submit_publish(browser)
    assert "ok" in dup["cls"], dup["text"]
    assert (dup.get("offset"), dup.get("duplicate")) == ("6", "true"), dup["text"]
    assert len(history(server, alpha)) == 7

    # History, three frames a page: 1-3, 4-6, 7, and no more.
    def page(button: str) -> tuple[list[str], bool]:
        js(browser, "delete document.getElementById('hist-status').dataset.page")
        browser.find_element(By.ID, button).click()
        wait_for(
            browser,
            f"a history page after {button}",
            lambda d: js(
                d, "return document.getElementById('hist-status').dataset.page !== undefined"
            ),
        )
        more = js(browser, "return document.getElementById('hist-status').dataset.more") == "true"
        next_enabled = browser.find_element(By.ID, "hist-next").is_enabled()
        assert next_enabled == more
        return [r["seq"] for r in rows(browser, "hist-rows")], more

    fill(browser, "hist-topic", alpha)
    fill(browser, "hist-from", "0")
    fill(browser, "hist-limit", "3")
    assert page("hist-load") == (["1", "2", "3"], True)
    assert page("hist-next") == (["4", "5", "6"], True)
    assert page("hist-next") == (["7"], False)
    # Newest first, four a page.
    browser.find_element(By.ID, "hist-reverse").click()
    fill(browser, "hist-limit", "4")
    assert page("hist-load") == (["7", "6", "5", "4"], True)
    assert page("hist-next") == (["3", "2", "1"], False)
    assert rows(browser, "hist-rows")[0]["payload"] == "alpha-3"

    # A burst on beta shows as a publish rate above zero.
    burst = "".join(f"beta-burst-{i}\n" for i in range(200))
    cli(
        framecast_bin,
        "publish",
        "--addr",
        f"http://{server.address}",
        "--topic",
        beta,
        "--seq-from",
        "100",
        stdin=burst,
    )
    wait_for(
        browser,
        "a publish rate above zero on beta",
        lambda d: (metric(d, beta, "rate") or "0.0") not in ("0.0", "0"),
    )
    wait_for(browser, "beta's frame count", lambda d: metric(d, beta, "frames") == "202")

    assert uncaught_errors(browser) == []
    js(browser, "window.scrollTo(0, 0)")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))


def test_console_with_auth_takes_the_token_from_the_url_or_the_token_field(
    browser: WebDriver,
    make_server: Callable[..., ServerProcess],
    framecast_bin: Path,
    tmp_path: Path,
) -> None:
    secret = tmp_path / "jwt.secret"
    secret.write_text(secrets.token_hex(32) + "\n")
    srv = make_server("--auth-jwt-secret-file", str(secret))
    token = cli(
        framecast_bin,
        "token",
        "--secret-file",
        str(secret),
        "--subject",
        "s",
        "--admin",
        "--publish",
        ">",
        "--subscribe",
        ">",
    ).strip()
    assert token
    publish(framecast_bin, srv, "secure.one", 1, "secret-1", token=token)

    # Without a token: the page says so and offers the token field.
    browser.get(f"{srv.http_url}/")
    wait_for(
        browser, "the token field", lambda d: d.find_element(By.ID, "token-panel").is_displayed()
    )
    assert listed_topics(browser) == []
    fill(browser, "token", token)
    browser.find_element(By.ID, "token-save").click()
    wait_for(
        browser, "topics listed with the typed token", lambda d: listed_topics(d) == ["secure.one"]
    )

    # From ?access_token=, in a fresh session: kept, and taken out of the address bar.
    js(browser, "sessionStorage.clear()")
    browser.get(f"{srv.http_url}/?access_token={urllib.parse.quote(token)}")
    wait_for(
        browser, "topics listed with the URL's token", lambda d: listed_topics(d) == ["secure.one"]
    )
    assert "access_token" not in browser.current_url

    # The tail (EventSource, token in the query) and the form (Bearer) work with it.
    fill(browser, "tail-topic", "secure.one")
    browser.find_element(By.ID, "tail-start").click()
    wait_for(
        browser,
        "the replayed frame",
        lambda d: [r["payload"] for r in rows(d, "tail")] == ["secret-1"],
    )
    fill(browser, "pub-topic", "secure.one")
    fill(browser, "pub-seq", "2")
    fill(browser, "pub-payload", "secret-2")
    ack = submit_publish(browser)
    assert "ok" in ack["cls"] and ack.get("offset") == "1", ack["text"]
    wait_for(browser, "the live frame", lambda d: (top_row(d) or {}).get("payload") == "secret-2")
    assert [f.get("text") for f in history(srv, "secure.one", token=token)] == [
        "secret-1",
        "secret-2",
    ]

    # Deleting the topic ends the stream with `event: error`: the page shows it and closes
    # the EventSource (no reconnect), and the topic leaves the table.
    delete_topic(srv, "secure.one", token=token)
    wait_for(browser, "the tail's end", lambda d: "ended: NOT_FOUND" in tail_status(d))
    assert not browser.find_element(By.ID, "tail-stop").is_enabled()
    wait_for(browser, "the topic gone from the table", lambda d: listed_topics(d) == [])
    assert uncaught_errors(browser) == []


def test_console_tail_resumes_exactly_across_a_server_restart(
    browser: WebDriver, make_server: Callable[..., ServerProcess], framecast_bin: Path
) -> None:
    """EventSource reconnects by itself with Last-Event-ID; the server resumes after that
    event, so the tail neither skips nor repeats a frame across a kill -9 and restart."""
    srv = make_server(
        "--http-listen", f"127.0.0.1:{free_port()}", "--fsync", "always", fixed_port=True
    )
    for seq in range(1, 4):
        publish(framecast_bin, srv, "resume", seq, f"r-{seq}")
    browser.get(f"{srv.http_url}/")
    fill(browser, "tail-topic", "resume")
    fill(browser, "tail-from", "0")
    browser.find_element(By.ID, "tail-start").click()
    wait_for(browser, "the replay", lambda d: len(rows(d, "tail")) == 3)

    srv.restart()  # kill -9, then the same ports again
    for seq in range(4, 6):
        publish(framecast_bin, srv, "resume", seq, f"r-{seq}")
    # Chromium waits about 3 s before it reconnects.
    wait_for(browser, "the frames published while away", lambda d: len(rows(d, "tail")) >= 5, 20)
    time.sleep(0.5)  # anything repeated would arrive with them
    got = rows(browser, "tail")
    assert [(r["seq"], r["offset"]) for r in got] == [(str(s), str(s - 1)) for s in (5, 4, 3, 2, 1)]
    assert "following resume" in tail_status(browser)
    assert uncaught_errors(browser) == []

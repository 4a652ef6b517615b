"""The operator dashboard in a real browser against a real ``reloop serve`` holding demo data."""

from __future__ import annotations

import itertools
import re

import httpx
import pytest
from playwright.sync_api import expect

from tests.support.wait import wait_for

from .conftest import TOKEN, PageWatch, Server

pytestmark = pytest.mark.browser


def open_dashboard(watch: PageWatch, server: Server, token: str | None = TOKEN) -> None:
    """Load /ui and, when given, enter the token in the page's form (as an operator would)."""
    page = watch.page
    page.goto(f"{server.url}/ui")
    page.wait_for_selector("body[data-loaded]")
    if token is not None:
        before = page.get_attribute("body", "data-loaded")
        page.fill("#token-input", token)
        page.press("#token-input", "Enter")
        expect(page.locator("body")).not_to_have_attribute("data-loaded", before or "")


def test_page_loads_clean_and_shows_what_the_api_reports(page: PageWatch, server: Server) -> None:
    open_dashboard(page, server)
    p = page.page
    api = server.admin("/v1/admin/versions")
    prod = api["production_version"]
    assert prod == server.demo.production

    # production card: the version the API reports, who promoted it, its metrics
    assert p.get_attribute("#prod-version", "data-version") == str(prod)
    assert p.inner_text("#prod-version") == f"v{prod}"
    assert p.inner_text("#prod-actor") == api["production"]["updated_by"] == "scheduler"
    auc = api["production"]["version"]["metrics"]["auc"]
    assert f"{auc:.4f}" in p.inner_text("#prod-body")
    assert p.is_hidden("#banner")
    assert p.inner_text("#token-state") == "token accepted"
    page.shot("00-first-screen", full_page=False)  # what a laptop shows first (docs/img/dashboard.png)

    # versions table: one row per version, production highlighted; filter and sort work
    assert p.locator("#versions-table tbody tr").count() == len(api["versions"]) == 5
    assert p.get_attribute("#versions-table tr.is-prod", "data-version") == str(prod)
    rejected_row = p.locator(f"#versions-table tr[data-version='{server.demo.rejected}']")
    text = rejected_row.inner_text()
    assert "rejected" in text
    # the verdict shows its numbers and each rule's own comparison: auc_floor passes at or above
    # its threshold, max_auc_drop fails above it
    assert re.search(r"auc_floor \d\.\d{4} ≥ 0\.3000 ✓", text), text
    assert re.search(r"max_auc_drop -?\d\.\d{4} > 0\.0100 ✗", text), text
    p.select_option("#status-filter", "archived")
    statuses = p.locator("#versions-table tbody tr").evaluate_all("rs => rs.map(r => r.dataset.status)")
    assert statuses and set(statuses) == {"archived"}
    p.select_option("#status-filter", "")
    p.click("#versions-table th[data-key='auc'] button")
    aucs = [v["metrics"]["auc"] for v in api["versions"]]
    shown = p.locator("#versions-table tbody tr").evaluate_all("rs => rs.map(r => Number(r.dataset.version))")
    by_auc = [v["version"] for v in sorted(api["versions"], key=lambda v: -v["metrics"]["auc"])]
    assert shown == by_auc and len(set(aucs)) == len(aucs)
    assert p.get_attribute("#versions-table th[data-key='auc']", "aria-sort") == "descending"

    # cycle history: a chart per metric, with the rejected and the failed runs marked; the runs table
    assert p.locator("#chart-auc").count() == 1 and p.locator("#chart-logloss").count() == 1
    assert p.locator("#chart-auc .rejected").count() == 1
    assert p.locator("#chart-auc .failed-mark").count() == 1
    runs = server.admin("/v1/admin/cycles")["runs"]
    assert p.locator("#runs-table tbody tr").count() == len(runs) == 6
    failed = p.locator(f"#runs-table tr[data-cycle='{server.demo.failed_day}']")
    assert "IngestError" in failed.inner_text() and "failed" in failed.inner_text()
    assert failed.locator("td").nth(3).inner_text() == "2"  # attempt
    assert failed.locator("td").nth(4).inner_text() == "3.5 s"  # duration of the last attempt

    # audit timeline: promotions and the rejection, with actor and reason
    kinds = p.locator("#timeline li").evaluate_all("ls => ls.map(l => l.dataset.kind)")
    assert kinds.count("promoted") == 4 and kinds.count("rejected") == 1 and "registered" not in kinds
    page.shot("01-overview")

    # a version's detail: lineage chain and the full config
    p.click(f"#versions-table tr[data-version='{prod}'] td:first-child a")
    p.wait_for_selector("#detail-config")
    detail = server.admin(f"/v1/admin/versions/{prod}")
    chain = p.locator("#version-detail .lineage li").all_inner_texts()
    assert [re.match(r"v(\d+)", t).group(1) for t in chain] == [  # type: ignore[union-attr]
        str(prod),
        *[str(v["version"]) for v in detail["lineage"]],
    ]
    assert '"loss": "reloop"' in p.inner_text("#detail-config")
    page.shot("02-version-detail")

    assert page.console_errors == [] and page.page_errors == []
    assert all(u.startswith(server.url) or u.startswith("data:") for u in page.requests), page.requests
    assert not any(TOKEN in u for u in page.requests)
    # the token is kept for this browser session only: a reload does not ask again
    p.reload()
    p.wait_for_selector("#prod-actor")
    assert p.evaluate("sessionStorage.getItem('reloop.adminToken')") == TOKEN
    assert TOKEN not in p.content() and TOKEN not in p.url


def test_rollback_from_the_page_moves_production(page: PageWatch, server: Server) -> None:
    open_dashboard(page, server)
    p = page.page
    assert server.production() == server.demo.production
    p.check("#rollback-prev")
    p.fill("#rollback-reason", "v5 overpredicts on mobile")
    p.click("#rollback-form button[type=submit]")
    p.wait_for_selector("#confirm[open]")
    assert "previous production" in p.inner_text("#confirm-title")
    page.shot("03-confirm-rollback")
    p.click("#confirm-ok")
    p.wait_for_selector("#action-result.ok")
    assert f"now v{server.demo.previous}" in p.inner_text("#action-result")

    # the API confirms, this replica serves it, and the page shows it
    assert server.production() == server.demo.previous
    model = httpx.get(f"{server.url}/v1/model", timeout=5).json()
    assert model["model_version"] == server.demo.previous
    p.wait_for_selector(f"#prod-version[data-version='{server.demo.previous}']")
    first = p.locator("#timeline li").first
    assert first.get_attribute("data-kind") == "rolled_back"
    text = first.inner_text()
    assert f"v{server.demo.production} → v{server.demo.previous}" in text
    assert "admin-api" in text and "v5 overpredicts on mobile" in text
    events = server.admin("/v1/admin/events?limit=1")["events"]
    assert events[0]["kind"] == "rolled_back" and events[0]["reason"] == "v5 overpredicts on mobile"
    page.shot("04-after-rollback")

    # a promotion back to the chosen version, also from the page (confirmation can be cancelled first)
    p.select_option("#promote-version", str(server.demo.production))
    p.fill("#promote-reason", "fixed upstream")
    p.click("#promote-form button[type=submit]")
    p.wait_for_selector("#confirm[open]")
    p.keyboard.press("Escape")
    p.wait_for_selector("#action-result.bad")
    assert "Cancelled" in p.inner_text("#action-result")
    assert server.production() == server.demo.previous
    # this time by keyboard only: Enter submits, the dialog focuses Cancel, Tab reaches Confirm
    p.focus("#promote-reason")
    p.keyboard.press("Enter")
    p.wait_for_selector("#confirm[open]")
    assert p.evaluate("document.activeElement.id") == "confirm-cancel"
    p.keyboard.press("Tab")
    assert p.evaluate("document.activeElement.id") == "confirm-ok"
    p.keyboard.press("Enter")
    p.wait_for_selector(f"#prod-version[data-version='{server.demo.production}']")
    assert server.production() == server.demo.production
    assert page.console_errors == [] and page.page_errors == []


def test_wrong_token_says_so_and_production_does_not_move(page: PageWatch, server: Server) -> None:
    open_dashboard(page, server, token="not-the-token")
    p = page.page
    p.wait_for_selector("#banner:not([hidden])")
    assert "refused" in p.inner_text("#banner") and "401" in p.inner_text("#banner")
    assert p.inner_text("#token-state") == "token refused"
    # the public part still works: the served version is shown from /v1/model
    assert p.get_attribute("#prod-version", "data-version") == str(server.demo.production)
    page.shot("05-wrong-token")

    p.fill("#rollback-reason", "should not happen")
    p.click("#rollback-form button[type=submit]")
    p.wait_for_selector("#confirm[open]")
    p.click("#confirm-ok")
    expect(p.locator("#action-result")).to_contain_text("Nothing was changed")
    assert "token is missing or wrong (401)" in p.inner_text("#action-result")
    assert server.production() == server.demo.production
    assert page.page_errors == []  # nothing broke: only the 401 responses were logged by the browser
    assert all("401" in e for e in page.console_errors), page.console_errors
    assert "not-the-token" not in server.log()

    # with no token at all, the page says what to do and acting is refused before any request
    p.click("#token-clear")
    expect(p.locator("#banner")).to_contain_text("Enter the admin token")
    sent = len(page.requests)
    p.fill("#promote-reason", "no token")
    p.click("#promote-form button[type=submit]")
    expect(p.locator("#action-result")).to_contain_text("No admin token")
    assert not any("/v1/admin/promote" in u for u in page.requests[sent:])
    assert server.production() == server.demo.production


def test_cycle_triggered_from_the_page_runs_and_its_failure_shows(page: PageWatch, server: Server) -> None:
    """A cycle for a date without logs: the page starts it, the run is skipped (no data), production stays."""
    open_dashboard(page, server)
    p = page.page
    day = "2024-05-07"
    p.fill("#cycle-date", day)
    p.fill("#cycle-reason", "late logs")
    p.click("#cycle-form button[type=submit]")
    p.wait_for_selector("#confirm[open]")
    assert day in p.inner_text("#confirm-title")
    p.click("#confirm-ok")
    expect(p.locator("#action-result")).to_contain_text("Cycle started: run ")
    run_id = int(re.search(r"run (\d+)", p.inner_text("#action-result")).group(1))  # type: ignore[union-attr]

    def finished() -> dict[str, object] | None:
        run = next(r for r in server.admin("/v1/admin/cycles")["runs"] if r["id"] == run_id)
        return run if run["status"] != "running" else None

    run = wait_for(finished, timeout=60, what=f"run {run_id} to finish", every=0.3)
    assert run["status"] == "skipped" and run["cycle_date"] == day and "no click logs" in run["error"]
    assert server.production() == server.demo.production
    assert "'late logs'" in server.log()  # the reason is logged with the actor

    p.reload()
    row = p.locator(f"#runs-table tr[data-cycle='{day}']")
    expect(row).to_contain_text("skipped")
    assert run["error"][:40] in row.inner_text()
    assert p.locator("#chart-auc .failed-mark").count() == 1  # skipped is not failed
    skipped = p.locator("#timeline li[data-kind='cycle_skipped']", has_text=day)
    expect(skipped).to_have_count(1)
    assert "admin-api:dashboard" in skipped.inner_text()  # the page names itself as the actor
    page.shot("06-cycle-skipped")
    assert page.page_errors == [] and page.console_errors == []


OVERFLOW_JS = """() => {
  const width = document.documentElement.clientWidth;
  const wide = [];
  for (const el of document.querySelectorAll('body *')) {
    if (el.closest('.table-wrap, pre, dialog:not([open])')) continue;  // these scroll inside themselves
    const r = el.getBoundingClientRect();
    const name = `${el.tagName.toLowerCase()}#${el.id}.${el.className}`;
    if (r.width > 0 && r.right > width + 0.5) wide.push(`${name} ${Math.round(r.right)}`);
  }
  return {scroll: document.documentElement.scrollWidth, width, wide: wide.slice(0, 12)};
}"""


@pytest.mark.parametrize("width", [1366, 390])
def test_the_page_fits_the_screen_without_horizontal_scroll(browser, server: Server, width: int) -> None:
    """A laptop and a phone (390 px, iPhone 12-15): nothing but a table or code block scrolls sideways."""
    context = browser.new_context(viewport={"width": width, "height": 844}, service_workers="block")
    try:
        p = context.new_page()
        p.set_default_timeout(15000)
        errors: list[str] = []
        p.on("pageerror", lambda exc: errors.append(str(exc)))
        watch = PageWatch(p, [], errors, [])
        open_dashboard(watch, server)
        p.wait_for_selector("#runs-table tbody tr")
        p.click(f"#versions-table tr[data-version='{server.demo.production}'] td:first-child a")
        p.wait_for_selector("#detail-config")
        fit = p.evaluate(OVERFLOW_JS)
        assert fit["scroll"] <= width and not fit["wide"], fit
        # the failed run's row keeps a readable error column (wraps inside the scrolling table)
        failed = p.locator(f"#runs-table tr[data-cycle='{server.demo.failed_day}'] td.err")
        assert failed.bounding_box()["width"] <= 460  # type: ignore[index]
        # chart ticks are round numbers; the AUC chart draws the 0.5 no-skill line
        for metric in ("auc", "logloss"):
            ticks = p.locator(f"#chart-{metric} .axis .ytick").evaluate_all(
                "ts => ts.map(t => t.textContent)"
            )
            values = [float(t) for t in ticks]
            steps = {round(b - a, 6) for a, b in itertools.pairwise(values)}
            assert len(ticks) >= 3 and len(steps) == 1, ticks  # evenly spaced
            step = steps.pop()
            assert any(abs(step - k * 10**e) < 1e-9 for k in (1, 2, 5) for e in range(-4, 1)), ticks
            assert all(len(t.split(".")[-1]) <= 3 for t in ticks), ticks  # 0.55, not 0.5537
        assert p.locator("#chart-auc .no-skill").count() == 1
        assert p.locator("#chart-logloss .no-skill").count() == 0
        if width == 390:
            p.evaluate("window.scrollTo(0, 0)")
            watch.shot("phone-390", full_page=False)  # docs/img/dashboard-phone.png
        assert errors == []
    finally:
        context.close()


def test_failed_cycles_are_in_the_audit_timeline_without_internal_ids(
    page: PageWatch, server: Server
) -> None:
    open_dashboard(page, server)
    p = page.page
    failed = p.locator("#timeline li[data-kind='cycle_failed']", has_text=str(server.demo.failed_day))
    expect(failed).to_have_count(1)
    expect(failed).to_contain_text("IngestError")
    runs = server.admin("/v1/admin/cycles")["runs"]
    owners = {r["owner"] for r in runs}
    body = p.inner_text("body")
    assert not any(o in body for o in owners), "claim owners are internal ids"
    # the operator's name goes with every action as X-Reloop-Actor and lands in the audit row
    p.fill("#actor-input", "maria")
    p.fill("#rollback-reason", "named rollback")
    p.click("#rollback-form button[type=submit]")
    p.wait_for_selector("#confirm[open]")
    p.click("#confirm-ok")
    p.wait_for_selector("#action-result.ok")
    events = server.admin("/v1/admin/events?limit=1")["events"]
    assert events[0]["kind"] == "rolled_back" and events[0]["actor"] == "admin-api:maria"
    assert page.page_errors == []

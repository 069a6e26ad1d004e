"""The UI, clicked (issue 14): a user backfills a range of ``destination_data`` partitions in Chromium.

On a fresh instance whose source covers June-July 2024, with a real ``dagster-webserver`` and a real
``dagster-daemon`` (backfill daemon + run queue) on 127.0.0.1, the test types a partition range on the
asset's Partitions page, opens the launcher dialog with "Materialize…", launches the backfill with
"Launch backfill", follows the toast's "View" link to the backfill page and waits there for
"Succeeded" (the page's label for COMPLETED_SUCCESS). Then it checks the instance (the backfill, its
runs, the materialized partitions) and the Delta table with real Spark: exactly the selected business
days have rows. Screenshots of every step go to ``test-artifacts/ui/``.
"""

from __future__ import annotations

import os
import re

import dagster as dg
import pytest

from backfill_platform.dagster_internals import BACKFILL_TERMINAL_STATUSES, BulkActionStatus
from backfill_platform.processes import DaemonProcess, initialize_instance_storage
from backfill_platform_tests.conftest import ARTIFACTS, make_dagster_home, subprocess_env
from backfill_platform_tests.helpers import BUSINESS_DAYS, rows_per_date, seed_source
from backfill_platform_tests.test_checks import CHROMIUM, CHROMIUM_FLAGS, webserver
from backfill_platform_tests.test_entry_points import wait_until

UI_ARTIFACTS = ARTIFACTS / "ui"
FIRST, LAST = "2024-07-01", "2024-07-10"
# the business days of [FIRST, LAST]: 07-04 is Independence Day, 07-06/07 a weekend
SELECTED = ["2024-07-01", "2024-07-02", "2024-07-03", "2024-07-05", "2024-07-08", "2024-07-09", "2024-07-10"]


@pytest.fixture
def ui_deployment(spark, settings, resources, tmp_path):
    """A fresh DAGSTER_HOME whose source_data is materialized (a real run in that instance) for
    June-July 2024: more dates than the test selects, so stray writes would show."""
    home = make_dagster_home(tmp_path / "dagster_home")
    initialize_instance_storage(home)  # before the webserver and the daemon open it at once
    with dg.DagsterInstance.from_config(str(home)) as instance:
        seed_source(resources, instance=instance, first_day="2024-06-03", last_day="2024-07-31")
    return settings, resources, home


def shot(page, name: str) -> None:
    page.screenshot(path=str(UI_ARTIFACTS / name))


@pytest.mark.slow
# a webserver, a daemon, one Spark run of 7 dates and a browser: ~2 min alone, far more when shared
@pytest.mark.timeout(1500)
def test_a_user_backfills_a_partition_range_from_the_ui(spark, ui_deployment, tmp_path):
    assert os.path.exists(CHROMIUM), (
        "Debian's chromium is needed for the UI test: apt-get install -y chromium (.ci/run does it)"
    )
    from playwright.sync_api import expect, sync_playwright

    settings, resources, home = ui_deployment
    assert BUSINESS_DAYS.partitions_def.get_partition_keys_in_range(dg.PartitionKeyRange(FIRST, LAST)) == SELECTED
    UI_ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in UI_ARTIFACTS.glob("backfill_*.png"):
        old.unlink()
    expect.set_options(timeout=90_000)
    daemon_log = tmp_path / "daemon.log"

    def daemon_said() -> str:
        return daemon_log.read_text()[-4000:] if daemon_log.exists() else "(no daemon log)"

    with DaemonProcess(home, env=subprocess_env(settings, home), log_path=daemon_log), \
            webserver(home, settings) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS[1:], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(90_000)
            # 1. The asset's Partitions page: every business day is missing on a fresh instance.
            page.goto(f"{base}/assets/destination_data?view=partitions")
            # The first-visit community dialog (a fresh instance) opens a second after the first page
            # loads: skip it as a user would; if it comes later, over a later click, skip it then.
            skip = page.get_by_role("button", name="Skip")
            try:
                skip.click(timeout=20_000)
            except Exception:  # it did not show up (yet)
                page.add_locator_handler(skip, lambda button: button.click())
            box = page.get_by_placeholder(re.compile(r"^ex: "))  # the partition range input
            expect(box).not_to_have_value("")  # the partition keys are loaded: all of them selected
            expect(page.get_by_text("Materialized (0)")).to_be_visible()
            shot(page, "backfill_01_partitions_page.png")

            # 2. Select the range: type it as the input's placeholder shows, Enter commits it.
            box.fill(f"[{FIRST}...{LAST}]")
            box.press("Enter")
            expect(page.get_by_text(f"{len(SELECTED)} Partitions Selected", exact=True)).to_be_visible()
            expect(page.get_by_text(f"Missing ({len(SELECTED)})")).to_be_visible()
            for key in (FIRST, LAST):
                expect(page.get_by_text(key, exact=True).first).to_be_visible()  # in the partition list
            shot(page, "backfill_02_range_selected.png")

            # 3. The launcher dialog, opened from the page header; it takes the page's selection.
            # (a button's accessible name starts with its icon's name: "materialization Materialize…")
            page.get_by_role("button", name=re.compile(r"(^|\s)Materialize…$")).click()
            dialog = page.get_by_role("dialog")
            expect(dialog.get_by_text("Launch runs to materialize destination_data")).to_be_visible()
            expect(dialog.get_by_text(f"{len(SELECTED)} partitions", exact=True)).to_be_visible()
            shot(page, "backfill_03_launch_dialog.png")
            # The dialog shows the last 90 days only; July 2024 is older: show all partitions to see
            # the selection (it is kept either way) before launching.
            dialog.get_by_role("button", name="Show all partitions").click()
            expect(dialog.get_by_role("textbox", name=re.compile(r"^ex: "))).to_have_value(f"[{FIRST}...{LAST}]")
            expect(dialog.get_by_text(f"{len(SELECTED)} partitions", exact=True)).to_be_visible()
            shot(page, "backfill_04_launch_dialog_all_partitions.png")

            # 4. Launch: a toast names the backfill and links to its page.
            dialog.get_by_role("button", name=re.compile(r"(^|\s)Launch backfill$")).click()
            expect(page.get_by_text("Created backfill")).to_be_visible()
            view = page.get_by_role("link", name="View", exact=True)
            href = view.get_attribute("href")
            assert href and href.startswith("/runs/b/"), href
            backfill_id = href.rsplit("/", 1)[-1]
            try:
                view.hover(timeout=15_000)  # waits until the toast has slid in; hovering keeps it open
                page.wait_for_timeout(500)  # its fade-in, for the screenshot
                shot(page, "backfill_05_launched_toast.png")
                view.click(timeout=15_000)
            except Exception:  # the toast closes by itself after a few seconds: go to its link's page
                page.goto(f"{base}{href}")
            page.wait_for_url(re.compile(rf"/runs/b/{backfill_id}"))
            page.mouse.move(700, 400)  # off the toast, which then closes

            # 5. The backfill page: the daemon runs it; the page refreshes itself (every 10 s) until
            # its status reads Succeeded.
            expect(page.get_by_text(f"{FIRST}...{LAST}")).to_be_visible()  # its partition selection
            status = page.locator("xpath=//div[./div[normalize-space(.)='Status']]")  # the Status detail
            expect(status).to_be_visible()
            shot(page, "backfill_06_backfill_page.png")
            with dg.DagsterInstance.from_config(str(home)) as instance:
                # fail fast (with the daemon's log) if the backfill ends otherwise
                def ended():
                    backfill = instance.get_backfill(backfill_id)
                    return backfill if backfill.status.value in BACKFILL_TERMINAL_STATUSES else None

                backfill = wait_until(ended, 900, f"backfill {backfill_id} to end", poll_s=3)
                assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS, daemon_said()
            expect(status.get_by_text("Succeeded", exact=True)).to_be_visible(timeout=120_000)
            expect(page.get_by_text("100% completed")).to_be_visible()
            shot(page, "backfill_07_backfill_succeeded.png")

            # 6. Back on the Partitions page: the selected days are materialized.
            page.goto(f"{base}/assets/destination_data?view=partitions")
            expect(page.get_by_text(f"Materialized ({len(SELECTED)})")).to_be_visible()
            shot(page, "backfill_08_partitions_materialized.png")
        finally:
            browser.close()

    with dg.DagsterInstance.from_config(str(home)) as instance:
        backfills = instance.get_backfills()
        assert [b.backfill_id for b in backfills] == [backfill_id]
        backfill = backfills[0]
        assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS
        assert backfill.tags.get("dagster/from_ui") == "true"  # launched by the UI's dialog
        target = backfill.asset_backfill_data.target_subset
        targeted = sorted((ap.asset_key, ap.partition_key) for ap in target.iterate_asset_partitions())
        assert targeted == [(dg.AssetKey("destination_data"), key) for key in SELECTED]
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        assert [run.status for run in runs] == [dg.DagsterRunStatus.SUCCESS], daemon_said()  # 7 dates: one run
        assert sorted(instance.get_materialized_partitions(dg.AssetKey("destination_data"))) == SELECTED
    # exactly the selected business days have rows (10 each, as the source has), no other date
    assert rows_per_date(spark, resources["tables"].source)["2024-06-28"] == 10  # the source covers more
    assert rows_per_date(spark, resources["tables"].destination) == {key: 10 for key in SELECTED}
    assert all((UI_ARTIFACTS / f).stat().st_size > 10_000 for f in [
        "backfill_01_partitions_page.png", "backfill_07_backfill_succeeded.png"
    ])

"""The admin's segments: sizes, member pages with no cap, the YAML editor, and streamed CSV downloads."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from encore_retention.core.settings import reset_settings
from encore_retention.core.store import session_scope
from encore_retention.core.store.ledger import get_or_create_shop
from encore_retention.core.store.models import Customer
from tests.conftest import SHOP, sign_in
from tests.test_admin import LOCAL, REMOTE, _csrf, _token

VIP = "description: Big spenders\nwhere:\n  total_spent: {at_least: 100}\n"


@pytest.fixture
def flows_dir(env: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    folder = tmp_path / "flows"
    (folder / "segments").mkdir(parents=True)
    (folder / "segments" / "vip.yaml").write_text(VIP)
    env.setenv("FLOWS_DIR", str(folder))
    reset_settings()
    return folder


def _customers(count: int, other: int = 0) -> None:
    """`count` customers of SHOP, every third a big spender, and `other` big spenders of another store."""
    with session_scope() as session:
        mine = get_or_create_shop(session, "shopify", SHOP)
        theirs = get_or_create_shop(session, "shopify", "someone-else.myshopify.com")
        session.flush()
        session.add_all(
            Customer(
                shop_id=mine.id,
                platform_id=str(n),
                email=f"c{n}@example.com",
                total_spent=Decimal(500 if n % 3 == 0 else 5),
                first_name="=cmd()" if n == 0 else "Ada",
            )
            for n in range(count)
        )
        session.add_all(
            Customer(shop_id=theirs.id, platform_id=f"x{n}", email=f"x{n}@example.com", total_spent=Decimal(900))
            for n in range(other)
        )


def test_a_segment_shows_its_size_and_every_member_page_by_page(client, redis, flows_dir):
    _customers(300, other=4)
    sign_in(client)
    listing = client.get("/admin/segments", environ_base=LOCAL).get_data(as_text=True)
    assert re.search(r"vip</b></a></td>\s*<td>Big spenders</td>\s*<td class=\"num\">104</td>", listing), listing
    seen: list[str] = []
    url = "/admin/segments/vip"
    for _ in range(10):
        page = client.get(url, environ_base=LOCAL)
        assert page.status_code == 200
        text = page.get_data(as_text=True)
        assert "104 customer(s)" in text
        seen += re.findall(r">(c\d+@example\.com|x\d+@example\.com)</a>", text)
        following = re.search(r'href="([^"]+)" rel="next"', text)
        if following is None:
            break
        url = following.group(1).replace("&amp;", "&")
    expected = [f"c{n}@example.com" for n in range(0, 300, 3)] + [f"x{n}@example.com" for n in range(4)]
    assert seen == expected  # 104 members over three pages of 50: none twice, none missed, no cap
    assert client.get("/admin/segments/vip?after=zz", environ_base=LOCAL).status_code == 400
    assert client.get("/admin/segments/nope", environ_base=LOCAL).status_code == 404


def test_a_store_sees_its_own_members_and_cannot_edit(client, redis, flows_dir):
    _customers(9, other=4)
    page = client.get("/admin/segments/vip", headers={"Authorization": f"Bearer {_token()}"}, environ_base=REMOTE)
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and "3 customer(s)" in text and "x0@example.com" not in text
    assert 'name="text"' not in text
    assert (
        client.post("/admin/segments/vip", data={"text": VIP, "csrf": _csrf(client)}, environ_base=REMOTE).status_code
        == 403
    )
    download = client.get("/admin/segments/vip/export.csv", environ_base=REMOTE).get_data(as_text=True)
    assert [row["customer_id"] for row in csv.DictReader(io.StringIO(download))] == ["0", "3", "6"]


def test_editing_a_segment_checks_it_then_writes_the_file(client, redis, flows_dir):
    _customers(9)
    sign_in(client)
    token = _csrf(client)
    bad = "where:\n  total_spent: {at_least: 50}\n  vip_level: 3\n"
    answer = client.post("/admin/segments/vip", data={"text": bad, "csrf": token}, environ_base=LOCAL)
    text = answer.get_data(as_text=True)
    assert answer.status_code == 400 and "segments/vip.yaml:3: unknown field `vip_level`" in text
    assert (flows_dir / "segments" / "vip.yaml").read_text() == VIP  # nothing written
    assert "vip_level: 3" in text  # the text stays in the editor to be fixed

    good = "where:\n  total_spent: {at_least: 5}\n"
    no_token = client.post("/admin/segments/vip", data={"text": good}, environ_base=LOCAL)
    assert no_token.status_code == 400 and (flows_dir / "segments" / "vip.yaml").read_text() == VIP
    saved = client.post("/admin/segments/vip", data={"text": good, "csrf": token}, environ_base=LOCAL)
    assert saved.status_code == 302 and saved.headers["Location"].endswith("/admin/segments/vip")
    assert (flows_dir / "segments" / "vip.yaml").read_text() == good
    assert "9 customer(s)" in client.get("/admin/segments/vip", environ_base=LOCAL).get_data(as_text=True)

    made = client.post(
        "/admin/segments", data={"name": "small", "text": "where: {total_spent: {at_most: 5}}", "csrf": token}
    )
    assert made.status_code == 302 and (flows_dir / "segments" / "small.yaml").is_file()
    assert "6 customer(s)" in client.get("/admin/segments/small", environ_base=LOCAL).get_data(as_text=True)
    # a file broken outside the admin is listed with its problem, and opens in the editor to be fixed
    (flows_dir / "segments" / "small.yaml").write_text("where:\n  total_spent: {at_most: five}\n")
    listing = client.get("/admin/segments", environ_base=LOCAL).get_data(as_text=True)
    assert "segments/small.yaml:2: where.total_spent.at_most" in listing
    broken = client.get("/admin/segments/small", environ_base=LOCAL).get_data(as_text=True)
    assert "at_most: five" in broken and "segments/small.yaml:2:" in broken
    bad_name = client.post("/admin/segments", data={"name": "../x", "text": good, "csrf": token}, environ_base=LOCAL)
    assert bad_name.status_code == 400 and not (flows_dir / "x.yaml").exists()


def test_the_built_in_library_is_read_only(client, redis, env):
    sign_in(client)
    page = client.get("/admin/segments/vip", environ_base=LOCAL).get_data(as_text=True)
    assert "Set FLOWS_DIR to edit segments" in page and 'name="text"' not in page
    refused = client.post("/admin/segments/vip", data={"text": VIP, "csrf": _csrf(client)}, environ_base=LOCAL)
    assert refused.status_code == 409


def test_csv_downloads_stream_a_segment_or_everyone(client: Any, redis, flows_dir):
    _customers(7)
    sign_in(client)
    answer = client.get("/admin/segments/vip/export.csv", environ_base=LOCAL)
    assert answer.status_code == 200 and answer.is_streamed
    assert answer.headers["Content-Disposition"] == 'attachment; filename="vip.csv"'
    rows = list(csv.DictReader(io.StringIO(answer.get_data(as_text=True))))
    assert [r["customer_id"] for r in rows] == ["0", "3", "6"]
    assert rows[0]["first_name"] == "'=cmd()"  # a spreadsheet shows it, never runs it
    everyone = client.get("/admin/customers/export.csv", environ_base=LOCAL).get_data(as_text=True)
    assert len(list(csv.DictReader(io.StringIO(everyone)))) == 7

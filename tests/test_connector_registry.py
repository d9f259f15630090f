"""The connector registry: built-ins, and a third-party package found through the `encore.connectors`
entry point group (tests/example_connector, installed the way pip lays it out: a dist-info folder with
its entry_points.txt next to the package on sys.path)."""

from __future__ import annotations

import importlib
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest

from encore_retention.connectors.base import (
    DiscountRequest,
    available,
    connector_class,
    get_connector,
    get_platform,
    platforms,
)
from encore_retention.connectors.shopify import ShopifyConnector
from encore_retention.connectors.woocommerce import WooCommerceConnector
from encore_retention.core.store.models import Shop

PACKAGE = Path(__file__).parent / "example_connector"


@pytest.fixture
def installed_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pip install tests/example_connector`, without pip: its metadata and entry points on sys.path."""
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    dist = tmp_path / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {value}" for name, value in entries.items())
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(PACKAGE))
    importlib.invalidate_caches()


def test_builtin_connectors():
    assert connector_class("shopify") is ShopifyConnector
    assert connector_class("woocommerce") is WooCommerceConnector


def test_unknown_platform_lists_the_available_ones():
    with pytest.raises(LookupError, match="no connector 'magento' .*shopify.*woocommerce"):
        connector_class("magento")


def test_a_third_party_connector_is_found_through_its_entry_point(installed_example):
    assert available()["example"] == "example_connector:ExampleConnector"
    shop = Shop(id=1, platform="example", domain="shop.example.net")
    connector = get_connector(shop)
    assert type(connector).__name__ == "ExampleConnector" and connector.shop is shop
    request = DiscountRequest(idempotency_key="run-1:step-1", kind="percent", value=Decimal("10"), prefix="hi-")
    first = connector.create_discount(request)
    assert first.code.startswith("HI-") and get_connector(shop).create_discount(request) == first
    connector.tag_customer("7", ["vip"])
    assert type(connector).tags["7"] == {"vip"}


def test_an_entry_point_that_is_not_a_connector_is_refused(installed_example):
    with pytest.raises(TypeError, match="is not a Connector"):
        connector_class("not-a-connector")


def test_without_the_package_the_platform_is_unknown():
    assert "example" not in available()


@pytest.fixture
def broken_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Two installed `encore.platforms` entries that can't be used: a module that fails, and not a Platform."""
    dist = tmp_path / "encore_platform_broken-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: encore-platform-broken\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(
        "[encore.platforms]\nbroken = encore_broken_platform:PLATFORM\nnotaplatform = json:dumps\n"
    )
    (tmp_path / "encore_broken_platform.py").write_text("raise ImportError('a dependency is missing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    platforms.cache_clear()
    yield
    platforms.cache_clear()


def test_a_plugin_that_fails_to_load_is_logged_and_the_others_work(broken_plugins, caplog):
    with caplog.at_level("ERROR"):
        found = platforms()
    assert sorted(found) == ["shopify", "woocommerce"]
    assert found["shopify"].connector is ShopifyConnector and connector_class("woocommerce") is WooCommerceConnector
    failed = {(r.getMessage(), getattr(r, "platform", None)) for r in caplog.records}
    assert ("platform plug-in failed to load", "broken") in failed
    assert ("entry point is not a Platform of that name", "notaplatform") in failed
    with pytest.raises(LookupError, match="no platform 'broken' \\(installed: shopify, woocommerce\\)"):
        get_platform("broken")


def test_encores_own_platforms_come_through_the_entry_points():
    from importlib.metadata import entry_points

    published = {e.name: e.value for e in entry_points(group="encore.platforms")}
    assert published["shopify"] == "encore_retention.connectors.shopify:PLATFORM"
    assert published["woocommerce"] == "encore_retention.connectors.woocommerce:PLATFORM"
    assert {name: p.receiver.platform for name, p in platforms().items()} == {
        "shopify": "shopify",
        "woocommerce": "woocommerce",
    }

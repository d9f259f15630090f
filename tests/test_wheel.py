"""The wheel `pip wheel .` builds runs on its own: installed in a fresh virtual environment, away from the checkout.

The email templates, the flow library, the migrations, the admin's pages and the samples ship as package
data; a wheel that left one out loads no flows, migrates nothing or answers the admin with a 500.
The new environment gets the wheel alone; the dependencies come from this environment's site-packages
through a `.pth` line (plain paths: the editable install's finder there is not run), so nothing is
downloaded and the checkout is on no import path.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from encore_retention.flows import loader
from tests import venvs
from tests.conftest import PAYLOADS, SHOPIFY_SECRET, redis_url_of, shopify_headers

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# The folders whose files the wheel must hold, and where they land in it: everything under one import root.
SHIPPED = {
    "connectors": "encore_retention/connectors",
    "encore": "encore_retention/core",
    "flows": "encore_retention/flows",
    "webhooks": "encore_retention/webhooks",
    "templates": "encore_retention/flows/templates",
}
# The top layer's own modules (worker, CLI, jobs, tools), beside the linked folders.
ROOT_FILES = {
    path.relative_to(ROOT).as_posix()
    for path in (ROOT / "encore_retention").rglob("*")
    if path.is_file()
    and "__pycache__" not in path.parts
    and path.suffix != ".pyc"
    and not any((ROOT / part).is_symlink() for part in path.relative_to(ROOT).parents if part != Path("."))
}
# Left out of the copy the wheel is built from: an in-tree build would leave build/ and egg-info in the checkout,
# shared by runs side by side.
NOT_COPIED = shutil.ignore_patterns(
    ".*", "__pycache__", "*.pyc", "*.egg-info", "build", "dist", "outbox", "*.db", "*.db-*"
)
# The environment of the commands run in the new virtual environment: Encore's settings are the test's own.
SETTINGS = (
    "DATABASE_URL",
    "REDIS_URL",
    "EMAIL_URL",
    "EMAIL_FROM",
    "SECRET_KEY",
    "APP_URL",
    "FLOWS_DIR",
    "TEMPLATES_DIR",
    "SHOPIFY_API_KEY",
    "SHOPIFY_API_SECRET",
    "SHOPIFY_API_SECRET_PREVIOUS",
    "ADMIN_PASSWORD",
)

PROBE = """
import json, sys
from encore_retention import flows
from encore_retention import tools
from encore_retention.core import store
from encore_retention.flows import loader, render
found, problems = loader.load_dir(loader.LIBRARY)
print(json.dumps({"flows_module": flows.__file__, "path": sys.path, "flows": sorted(f.key for f in found),
                  "problems": [str(p) for p in problems],
                  "folders": [str(p) for p in (render.BUILTIN_TEMPLATES, loader.LIBRARY, store.MIGRATIONS,
                                               tools.SAMPLES)]}))
"""

# A signed delivery through the real receiver, and the admin's sign-in page and stylesheet, in the web app.
POST = """
import json, sys
from pathlib import Path
from encore_retention.web import create_app
client = create_app().test_client()
body, headers = Path(sys.argv[1]).read_bytes(), json.loads(Path(sys.argv[2]).read_text())
webhook = client.post("/webhooks/shopify", data=body, headers=headers)
login = client.get("/admin/login")
css = client.get("/admin/static/admin.css")
print(json.dumps({"webhook": webhook.status_code, "login": login.status_code,
                  "signed_in_page": b"<h1>Sign in</h1>" in login.data, "css": css.status_code,
                  "css_bytes": len(css.data)}))
"""

RECEIPT_FLOW = """\
name: Receipt
kind: transactional
trigger:
  event: order.placed
steps:
  - send_email:
      template: thank_you_first_order.html
      subject: "We have your order {{ order.number }}"
"""
# Searched before the built-in templates: the built-in thank-you page extends this layout instead of its own.
LAYOUT = """\
<!doctype html>
<html><body><p>Layout from TEMPLATES_DIR</p>{% block content %}{% endblock %}</body></html>
"""


@dataclass
class Installed:
    """The wheel installed in a fresh virtual environment, and a working folder outside the checkout."""

    wheel: Path
    bin: Path
    site_packages: Path
    work: Path

    def run(self, command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """Run a command of the new environment in the working folder, with only `env` as Encore's settings."""
        clean = {
            k: v
            for k, v in os.environ.items()
            if k not in SETTINGS and not k.startswith(("PYTHON", "ENCORE_")) and k != "VIRTUAL_ENV"
        }
        return subprocess.run(command, cwd=self.work, env={**clean, **env}, capture_output=True, text=True, timeout=120)

    def python(self, code: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """Run a script with the new environment's Python."""
        script = self.work / "script.py"
        script.write_text(code)
        return self.run([str(self.bin / "python"), str(script), *args], env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """Build the wheel from a copy of the checkout and install it, alone, in a new virtual environment."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=NOT_COPIED)
    wheel = venvs.build_wheel(source, base / "dist", "encore_retention")
    python, site_packages = venvs.new_environment(base / "venv")
    venvs.install(python, wheel)

    work = base / "work"
    work.mkdir()
    yield Installed(wheel=wheel, bin=python.parent, site_packages=site_packages, work=work)


def _shipped_files() -> set[str]:
    """Every file of the shipped folders of the checkout, named as in the wheel."""
    found = set(ROOT_FILES)
    for folder, target in SHIPPED.items():
        for path in (ROOT / folder).rglob("*"):
            relative = path.relative_to(ROOT / folder)
            if (
                path.is_file()
                and not any(part.startswith((".", "__pycache__")) for part in relative.parts)
                and path.suffix != ".pyc"
            ):
                found.add(f"{target}/{relative.as_posix()}")
    return found


def _holds_encore(folder: Path) -> bool:
    """Whether Encore's modules can be imported from a folder on the import path (by any name, old or new)."""
    return any((folder / name).exists() for name in ("encore_retention", *SHIPPED, "worker.py") if name != "templates")


def test_the_wheel_holds_every_file_of_the_packages_and_the_templates(installed):
    with zipfile.ZipFile(installed.wheel) as archive:
        names = {name for name in archive.namelist() if ".dist-info/" not in name}
    assert _shipped_files() - names == set()
    assert {
        "encore_retention/flows/templates/base.html",
        "encore_retention/flows/library/welcome.yaml",
        "encore_retention/core/store/migrations/script.py.mako",
        "encore_retention/web/admin/templates/admin/login.html",
        "encore_retention/web/admin/static/admin.css",
    } <= names
    # One import root: nothing lands beside it in site-packages (no `webhooks`, `flows`, `worker` of ours there).
    assert {name.split("/")[0] for name in names} == {"encore_retention"}


def test_installed_from_the_wheel_it_loads_the_built_in_library_from_site_packages(installed):
    probe = installed.python(PROBE, env={})
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    # The checkout is on no import path: every module and folder comes from the new environment.
    assert Path(found["flows_module"]).is_relative_to(installed.site_packages)
    assert [p for p in found["path"] if p and _holds_encore(Path(p))] == [str(installed.site_packages)]
    assert all(Path(folder).is_relative_to(installed.site_packages) for folder in found["folders"]), found["folders"]
    in_checkout, problems = loader.load_dir(loader.LIBRARY)
    assert problems == []
    assert found["problems"] == []
    assert found["flows"] == sorted(f.key for f in in_checkout)

    lint = installed.run([str(installed.bin / "encore"), "flows", "lint"], env={})
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert f"{len(in_checkout)} flow file(s): 0 error(s)" in lint.stderr


def test_installed_from_the_wheel_a_signed_order_becomes_an_email(installed, redis):
    work = installed.work
    (work / "my-flows").mkdir()
    (work / "my-flows" / "receipt.yaml").write_text(RECEIPT_FLOW)
    (work / "my-templates").mkdir()
    (work / "my-templates" / "base.html").write_text(LAYOUT)
    env = {
        "DATABASE_URL": f"sqlite:///{work / 'encore.db'}",
        "REDIS_URL": redis_url_of(redis),
        "EMAIL_URL": f"file://{work / 'outbox'}",
        "SECRET_KEY": "wheel-test-secret",
        "ENCORE_DATA_DIR": str(work / "data"),
        "SHOPIFY_API_KEY": "test-api-key",
        "SHOPIFY_API_SECRET": SHOPIFY_SECRET,
        "FLOWS_DIR": str(work / "my-flows"),
        "TEMPLATES_DIR": str(work / "my-templates"),
    }

    migrated = installed.run([str(installed.bin / "encore"), "migrate"], env)
    assert migrated.returncode == 0, migrated.stderr
    body = (PAYLOADS / "shopify" / "orders_create.json").read_bytes()
    (work / "order.json").write_bytes(body)
    (work / "headers.json").write_text(json.dumps(shopify_headers(body, "orders/create")))
    posted = installed.python(POST, str(work / "order.json"), str(work / "headers.json"), env=env)
    assert posted.returncode == 0, posted.stderr
    css = ROOT / "encore_retention" / "web" / "admin" / "static" / "admin.css"
    assert json.loads(posted.stdout) == {
        "webhook": 200,
        "login": 200,
        "signed_in_page": True,
        "css": 200,
        "css_bytes": css.stat().st_size,
    }

    drained = installed.run([str(installed.bin / "encore"), "worker", "--burst"], env)
    assert drained.returncode == 0, drained.stderr
    sent = sorted((work / "outbox").glob("*.eml"))
    assert len(sent) == 1, drained.stderr
    message = email.message_from_bytes(sent[0].read_bytes(), policy=email.policy.default)
    order = json.loads(body)
    assert message["To"].addresses[0].addr_spec == order["customer"]["email"]
    assert message["Subject"] == f"We have your order {order['order_number']}"
    html = message.get_body(("html",)).get_content()
    assert f"Thank you, {order['customer']['first_name']}!" in html  # the built-in template, from the wheel
    assert "Layout from TEMPLATES_DIR" in html  # TEMPLATES_DIR is searched first

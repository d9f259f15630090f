"""A store platform from another distribution works with zero edits to Encore.

tests/platform_plugin is the `acme` platform as a developer outside Encore would publish it: a receiver,
a connector and a plug-in entry with its `encore stores add acme` command and example deliveries, found
through the `encore.platforms` entry point group. It is built as a wheel and installed with pip into a new
virtual environment, beside Encore as `make` installs it: this environment's site-packages (the
dependencies, Encore's metadata and its editable finder) come in through a `.pth` file, so nothing is
downloaded. There:

- the shared bad-input table of tests/test_webhooks.py, which names no platform, runs for `acme` too;
- `encore stores add acme` connects a store, and a signed order through `/webhooks/acme` becomes a
  discount code made through Acme's API (faked with `responses`) and an email carrying it.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import venvs
from tests.conftest import redis_url_of
from tests.test_webhooks import BAD_INPUTS, WORKER_BAD_VALUES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = Path(__file__).parent / "platform_plugin"
# Encore's settings and Python's own: the commands in the new environment get only the test's.
SETTINGS = ("DATABASE_URL", "REDIS_URL", "EMAIL_URL", "SECRET_KEY", "APP_URL", "FLOWS_DIR", "TEMPLATES_DIR")

FLOW = """\
name: Thanks, with a code
kind: transactional
trigger:
  event: order.placed
steps:
  - create_discount:
      as: thanks
      amount: 10
      expires_in: 30d
      prefix: THANKS
  - send_email:
      template: thanks_code.html
      subject: "Your code {{ thanks.code }}"
"""
TEMPLATE = "<p>Thank you, {{ customer.first_name }}. Your code: {{ thanks.code }}</p>\n"

ORDER = """
import json, sys
import responses
from rq import SimpleWorker
from rq.serializers import JSONSerializer
from encore_retention.connectors.base import platforms
from encore_retention.core import queue
from encore_retention.web import create_app

acme = platforms()["acme"]
body = json.dumps(acme.samples.example("order.placed")).encode()
headers = acme.samples.headers(body, secret="s3cret", store="shop-1.acme.test")
client = create_app().test_client()
answers = [
    client.post("/webhooks/acme", data=body, headers=headers),
    client.post("/webhooks/acme", data=body, headers=headers),  # delivered again: a duplicate
    client.post("/webhooks/acme", data=body, headers={**headers, "X-Acme-Signature": "sha256=00"}),
]
with responses.RequestsMock() as api:
    api.post("https://shop-1.acme.test/api/v1/discount-codes", json={"id": "dc_1", "code": "THANKS-7Q2K"}, status=201)
    redis = queue.get_redis()
    queues = [queue.queue(name, redis) for name in queue.QUEUES]
    SimpleWorker(queues, connection=redis, serializer=JSONSerializer).work(burst=True)
    calls = [
        {"url": c.request.url, "authorization": c.request.headers.get("Authorization"),
         "idempotency_key": c.request.headers.get("Idempotency-Key"), "body": json.loads(c.request.body)}
        for c in api.calls
    ]
print(json.dumps({"answers": [[a.status_code, a.get_json()] for a in answers], "calls": calls,
                  "platforms": sorted(platforms())}))
"""


@dataclass
class Environment:
    """The new virtual environment with the plug-in installed, and a working folder."""

    python: Path
    work: Path

    def run(self, args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run the new environment's Python with `args`, with only `env` as Encore's settings."""
        clean = {
            k: v
            for k, v in os.environ.items()
            if k not in SETTINGS and not k.startswith(("PYTHON", "ENCORE_", "SHOPIFY_")) and k != "VIRTUAL_ENV"
        }
        return subprocess.run(
            [str(self.python), *args],
            cwd=cwd or self.work,
            env={**clean, **env},
            capture_output=True,
            text=True,
            timeout=600,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    """Build the plug-in's wheel and install it, with pip, into a new virtual environment."""
    base = tmp_path_factory.mktemp("plugin")
    source = base / "source"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    wheel = venvs.build_wheel(source, base / "dist", "encore_platform_acme")
    python, _ = venvs.new_environment(base / "venv", with_encore_editable=True)
    venvs.install(python, wheel)
    work = base / "work"
    work.mkdir()
    yield Environment(python=python, work=work)


def test_the_shared_bad_input_table_passes_for_the_plugin_platform(installed: Environment):
    tests = ["tests/test_webhooks.py::test_bad_input_is_rejected_and_nothing_is_queued"]
    tests += ["tests/test_webhooks.py::test_valid_delivery_is_queued"]
    tests += ["tests/test_webhooks.py::test_a_queued_delivery_the_worker_cannot_take_is_recorded_and_not_retried"]
    run = installed.run(
        ["-m", "pytest", *tests, "-k", "acme", "-o", "addopts=", "-v", "-p", "no:cacheprovider"], env={}, cwd=ROOT
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    passed = [line for line in run.stdout.splitlines() if "acme" in line and "PASSED" in line]
    for case in BAD_INPUTS:
        name = case.__name__.strip("_")
        assert any(f"[{name}-acme]" in line or f"[acme-{name}]" in line for line in passed), name
    assert any("test_valid_delivery_is_queued[acme]" in line for line in passed)
    for value in WORKER_BAD_VALUES:
        assert any("worker_cannot_take" in line and value in line for line in passed), value


def test_a_signed_order_of_the_plugin_platform_becomes_a_code_and_an_email(installed: Environment, redis):
    work = installed.work
    (work / "flows").mkdir()
    (work / "flows" / "thanks.yaml").write_text(FLOW)
    (work / "templates").mkdir()
    (work / "templates" / "thanks_code.html").write_text(TEMPLATE)
    env = {
        "DATABASE_URL": f"sqlite:///{work / 'encore.db'}",
        "REDIS_URL": redis_url_of(redis),
        "EMAIL_URL": f"file://{work / 'outbox'}",
        "SECRET_KEY": "plugin-test-secret",
        "ENCORE_DATA_DIR": str(work / "data"),
        "APP_URL": "https://encore.example.com",
        "FLOWS_DIR": str(work / "flows"),
        "TEMPLATES_DIR": str(work / "templates"),
    }
    listed = installed.run(["-m", "encore_retention.cli", "stores", "add", "--help"], env)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^\s+acme\s+Connect an Acme Commerce store", listed.stdout, re.M), listed.stdout
    add = ["stores", "add", "acme", "Shop-1.acme.test", "--api-token", "tok-1", "--webhook-secret", "s3cret"]
    added = installed.run(["-m", "encore_retention.cli", *add], env)
    assert added.returncode == 0, added.stdout + added.stderr
    assert "store 1 added: acme shop-1.acme.test" in added.stdout

    script = work / "order.py"
    script.write_text(ORDER)
    run = installed.run([str(script)], env)
    assert run.returncode == 0, run.stdout + run.stderr
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["platforms"] == ["acme", "shopify", "woocommerce"]
    (queued, first), (again, second), (forged, refused) = found["answers"]
    assert (queued, first["status"]) == (200, "queued")
    assert (again, second["status"]) == (200, "duplicate")
    assert (forged, refused["error"]) == (401, "bad_signature")

    [call] = found["calls"]  # one code, made once
    assert call["url"] == "https://shop-1.acme.test/api/v1/discount-codes"
    assert call["authorization"] == "Bearer tok-1" and call["idempotency_key"]
    assert call["body"]["customer_id"] == "cus_77" and call["body"]["value"] == "10"

    [sent] = list((work / "outbox").glob("*.eml"))
    message = email.message_from_bytes(sent.read_bytes(), policy=email.policy.default)
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == "Your code THANKS-7Q2K"
    assert "Thank you, Ada. Your code: THANKS-7Q2K" in message.get_body(("html",)).get_content()

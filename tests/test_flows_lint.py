"""Marketers' tools: `encore flows lint` (file:line: message), `schema`, `preview`; bad flows are skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from encore_retention.cli import main
from encore_retention.core.settings import reset_settings
from encore_retention.flows import loader, render
from encore_retention.flows.schema import EventTrigger

GOOD = """\
name: Good
trigger:
  event: order.placed
steps:
  - send_email:
      template: thank_you_first_order.html
      subject: "Thanks {{ customer.first_name }}"
"""

CASES = {
    # file text -> (line, message fragment)
    "unknown_step": (
        "name: x\ntrigger:\n  event: order.placed\nsteps:\n  - wait: 1h\n  - send_mail:\n      template: a.html\n",
        6,
        "unknown step 'send_mail' (expected one of: wait, send_email, notify, create_discount, tag_customer, if, http, "
        "stop, split, account_invite, review_link)",
    ),
    "unknown_trigger": (
        "name: x\ntrigger:\n  evnt: order.placed\nsteps:\n  - stop\n",
        3,
        "unknown trigger 'evnt' (expected one of: event, date)",
    ),
    "unknown_event": (
        "name: x\ntrigger:\n  event: order.shipped\nsteps:\n  - stop\n",
        3,
        "unknown event type 'order.shipped' (expected 'order.placed', 'order.paid'",
    ),
    "bad_expression": (
        "name: x\ntrigger:\n  event: order.placed\nconditions:\n  - customer.orders_count ==\nsteps:\n  - stop\n",
        5,
        "bad expression 'customer.orders_count =='",
    ),
    "undefined_in_expression": (
        "name: x\ntrigger:\n  event: order.placed\nconditions:\n  - custmer.orders_count > 1\nsteps:\n  - stop\n",
        5,
        "undefined variable 'custmer'",
    ),
    "missing_template": (
        "name: x\ntrigger:\n  event: order.placed\nsteps:\n  - send_email:\n"
        "      template: nope.html\n      subject: hi\n",
        6,
        "missing template 'nope.html'",
    ),
    "undefined_in_template": (
        "name: x\ntrigger:\n  event: order.placed\nsteps:\n  - send_email:\n"
        "      template: uses_coupon.html\n      subject: hi\n",
        6,
        "undefined variable 'coupon' in template 'uses_coupon.html'",
    ),
    "bad_duration": (
        "name: x\ntrigger:\n  event: order.placed\nsteps:\n  - wait: 3 days\n",
        5,
        "wait: bad duration '3 days' (expected e.g. 30m, 2h, 14d, 8w)",
    ),
    "bad_priority": (
        "name: x\ntrigger:\n  event: order.placed\npriority: urgent\nsteps:\n  - stop\n",
        4,
        "priority: 'urgent' is not high, normal, low or a number from 0 to 100",
    ),
    "priority_out_of_range": (
        "name: x\ntrigger:\n  event: order.placed\npriority: 101\nsteps:\n  - stop\n",
        4,
        "priority: ",
    ),
    "missing_field": (
        "name: x\ntrigger:\n  event: order.placed\nsteps:\n  - send_email:\n      template: a.html\n",
        5,
        "missing `subject`",
    ),
}

WARNINGS = {
    "expires_first": (
        "name: x\ntrigger:\n  event: order.placed\nsteps:\n"
        "  - create_discount: {as: welcome, percent: 5, expires_in: 2d}\n  - wait: 3d\n"
        "  - send_email:\n      template: welcome.html\n      subject: hi\n",
        7,
        "discount 'welcome' expires (2d) before this email is sent (3d after it is created)",
    ),
    "yearly_unguarded": (
        "name: x\ntrigger:\n  date: customer.birthday\n  offset: -14d\nsteps:\n  - stop\n",
        2,
        "a yearly date trigger (customer.birthday) without `entry: once_per: year`",
    ),
    "max_delay_below_the_cap": (
        "name: x\ntrigger:\n  event: order.placed\nmax_delay: 8h\nsteps:\n  - stop\n",
        4,
        "max_delay 8h is shorter than frequency_cap 16h: an email the cap holds back is likely dropped, not sent later",
    ),
    "no_unsubscribe": (
        "name: x\ntrigger:\n  event: order.placed\nsteps:\n  - send_email:\n"
        "      template: bare.html\n      subject: hi\n",
        6,
        "marketing email template 'bare.html' has no unsubscribe link",
    ),
}


@pytest.fixture
def templates(env: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "uses_coupon.html").write_text(
        '{% extends "base.html" %}{% block content %}{{ coupon.code }}{% endblock %}'
    )
    (folder / "bare.html").write_text("<p>Hello {{ customer.first_name }}</p>")
    env.setenv("TEMPLATES_DIR", str(folder))
    reset_settings()
    render.reset()
    yield folder
    render.reset()


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_lint_reports_file_line_message(case: str, templates: Path, tmp_path: Path) -> None:
    text, line, fragment = CASES[case]
    path = write(tmp_path / "flows", case, text)
    result = CliRunner().invoke(main, ["flows", "lint", str(path)])
    assert result.exit_code == 1, result.output
    assert f"{path}:{line}: {fragment}" in result.output


@pytest.mark.parametrize("case", sorted(WARNINGS))
def test_lint_warns_about_valid_but_wrong_flows(case: str, templates: Path, tmp_path: Path) -> None:
    text, line, fragment = WARNINGS[case]
    path = write(tmp_path / "flows", case, text)
    result = CliRunner().invoke(main, ["flows", "lint", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}:{line}: warning: {fragment}" in result.output


BROKEN_FLOW = (
    "name: x\ntrigger:\n  event: order.placed\nsteps:\n  - send_email:\n      template: broken.html\n"
    "      subject: hi\n"
)
MACROS = '{% macro button(url, label) %}<a href="{{ url }}">{{ label }}</a>{% endmacro %}\n'

TEMPLATE_CASES = {
    # the files written to TEMPLATES_DIR (the flow uses broken.html) -> (file, line, message fragment)
    "include_typo": (
        {
            "broken.html": '{% extends "base.html" %}{% block content %}\n<p>Hi</p>\n'
            '{% include "footer_typo.html" %}{% endblock %}'
        },
        "broken.html",
        3,
        "includes 'footer_typo.html', which does not exist (looked in: ",
    ),
    "syntax_error": (
        {"broken.html": '{% extends "base.html" %}\n{% block content %}\n{{ customer.first_name }\n{% endblock %}'},
        "broken.html",
        3,
        "unexpected '}'",
    ),
    "syntax_error_in_layout": (
        {
            "layout.html": "<html>\n{% block content %}{% endblok %}</html>",
            "broken.html": '{% extends "layout.html" %}{% block content %}x{% endblock %}',
        },
        "layout.html",
        2,
        "Encountered unknown tag 'endblok'",
    ),
    "missing_layout": (
        {"broken.html": '\n{% extends "layot.html" %}'},
        "broken.html",
        2,
        "extends 'layot.html', which does not exist",
    ),
    "undefined_macro_import": (
        {"macros.html": MACROS, "broken.html": "{% from \"macros.html\" import buton %}\n{{ buton('/x', 'Go') }}"},
        "broken.html",
        1,
        "'macros.html' defines no macro or variable 'buton'",
    ),
    "import_from_a_missing_file": (
        {"broken.html": '<p>\n{% from "macro.html" import button %}</p>'},
        "broken.html",
        2,
        "imports 'macro.html', which does not exist",
    ),
    "undefined_macro_of_a_module": (
        {"macros.html": MACROS, "broken.html": "{% import \"macros.html\" as ui %}\n{{ ui.buton('/x', 'Go') }}"},
        "broken.html",
        2,
        "'macros.html' defines no macro or variable 'buton'",
    ),
    "unknown_filter": (
        {"broken.html": "<p>\n{{ customer.first_name | titel }}</p>"},
        "broken.html",
        2,
        "No filter named 'titel'",
    ),
    "broken_text_twin": (
        {"broken.html": "<p>{{ customer.first_name }}</p>", "broken.txt": 'Hi\n{% include "signature.txt" %}'},
        "broken.txt",
        2,
        "includes 'signature.txt', which does not exist",
    ),
}


@pytest.mark.parametrize("case", sorted(TEMPLATE_CASES))
def test_a_broken_template_is_a_lint_error_at_its_file_and_line(case: str, templates: Path, tmp_path: Path) -> None:
    files, where, line, fragment = TEMPLATE_CASES[case]
    for name, text in files.items():
        (templates / name).write_text(text)
    folder = tmp_path / "flows"
    path = write(folder, "broken", BROKEN_FLOW)
    write(folder, "good", GOOD)
    result = CliRunner().invoke(main, ["flows", "lint", str(folder)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (error,) = [found for found in result.stdout.splitlines() if "warning:" not in found]
    assert error.startswith(f"{path}:6: template 'broken.html' cannot be used: {templates / where}:{line}: "), error
    assert fragment in error
    assert "2 flow file(s): 1 error(s)" in result.stderr


def test_a_flow_using_a_broken_template_is_skipped_while_the_others_load(
    env: pytest.MonkeyPatch, templates: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (templates / "broken.html").write_text('<p>Hi</p>\n{% include "footer_typo.html" %}')
    folder = tmp_path / "flows"
    write(folder, "broken", BROKEN_FLOW)
    write(folder, "good", GOOD)
    env.setenv("FLOWS_DIR", str(folder))
    reset_settings()
    registry = loader.registry()
    assert list(registry.flows) == ["good"]
    assert [str(p) for p in registry.problems if p.severity == "error"] == [
        f"{folder / 'broken.yaml'}:6: template 'broken.html' cannot be used: {templates / 'broken.html'}:2: "
        f"includes 'footer_typo.html', which does not exist (looked in: {templates}, {render.BUILTIN_TEMPLATES})"
    ]
    assert "broken.yaml:6: template 'broken.html' cannot be used" in caplog.text
    # Mended, the flow loads again without a restart.
    (templates / "footer_typo.html").write_text("<p>Bye</p>")
    assert sorted(loader.registry().flows) == ["broken", "good"]


def test_names_a_template_imports_at_its_top_are_known_in_its_blocks(templates: Path, tmp_path: Path) -> None:
    (templates / "macros.html").write_text(MACROS)
    (templates / "broken.html").write_text(
        '{% extends "base.html" %}{% from "macros.html" import button %}{% import "macros.html" as ui %}'
        "{% set greeting = 'Hi' %}{% block content %}{{ greeting }} {{ button('/a', 'A') }}"
        "{{ ui.button('/b', 'B') }}{{ unsubscribe_url }}{% endblock %}"
    )
    path = write(tmp_path / "flows", "uses_macros", BROKEN_FLOW)
    result = CliRunner().invoke(main, ["flows", "lint", str(path)])
    assert result.exit_code == 0 and result.stdout == "", result.output


def test_lint_of_the_library_and_the_examples_is_clean(env: pytest.MonkeyPatch) -> None:
    examples = Path(__file__).resolve().parents[2] / "shared" / "flow-examples"  # ../shared beside the checkout
    assert examples.is_dir(), f"the marketers' flow examples are missing: {examples}"
    for target, flows in ((loader.LIBRARY, 13), (examples, 7)):
        result = CliRunner().invoke(main, ["flows", "lint", str(target)])
        assert result.exit_code == 0, result.output
        summary = f"{flows} flow file(s): 0 error(s), 0 warning(s)"
        assert result.stdout == "" and summary in result.output, result.output
    assert "(with 1 segment file(s))" in CliRunner().invoke(main, ["flows", "lint", str(loader.LIBRARY)]).output


def test_a_bad_flow_is_reported_and_skipped_while_the_others_load(
    env: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "flows"
    write(folder, "good", GOOD)
    write(folder, "broken", CASES["unknown_step"][0])
    env.setenv("FLOWS_DIR", str(folder))
    reset_settings()
    registry = loader.registry()
    assert list(registry.flows) == ["good"]
    assert [p.line for p in registry.problems] == [6]
    assert "broken.yaml:6: unknown step 'send_mail'" in caplog.text


def test_schema_export(env: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(main, ["flows", "schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["title"] == "Encore flow"
    assert set(schema["required"]) == {"name", "trigger", "steps"}
    text = json.dumps(schema)
    for key in (
        "send_email",
        "create_discount",
        "wait",
        "tag_customer",
        "http",
        "stop",
        "once_per_customer",
        "quiet_hours",
        "frequency_cap",
        "exit_on",
    ):
        assert f'"{key}"' in text
    assert "order.placed" in text and "customer.birthday" in text


def test_preview_writes_html_files(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sample = tmp_path / "grace.json"
    sample.write_text(
        json.dumps(
            {
                "first_name": "Grace",
                "email": "grace@example.com",
                "orders_count": 3,
                "shop": {"name": "Tea Corner", "currency": "GBP"},
            }
        )
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["flows", "preview", "win_back", "--customer", str(sample), "--out", str(out)])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.glob("*.html"))
    assert files == ["win_back-1-win_back.html", "win_back-2-win_back_reminder.html"]
    html = (out / "win_back-1-win_back.html").read_text()
    assert "We miss you, Grace" in html and "BACKPREVIEW" in html and "Tea Corner" in html
    assert "/unsubscribe/" in html
    text = (out / "win_back-1-win_back.txt").read_text()
    assert text.startswith("Subject: It's been a while: 15% off, just for you")
    assert "<" not in text


def test_preview_of_an_unknown_flow_fails_clearly(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sample = tmp_path / "c.json"
    sample.write_text("{}")
    result = CliRunner().invoke(main, ["flows", "preview", "nope", "--customer", str(sample)])
    assert result.exit_code == 1
    assert "no flow 'nope'" in result.output


def test_text_part_reads_well_without_the_hidden_preheader(env: pytest.MonkeyPatch) -> None:
    from encore_retention.flows.render import html_to_text, render_email

    html, text = render_email(
        "check_in.html",
        {
            "customer": {"first_name": "Ada"},
            "shop": {"name": "Tea Corner", "domain": "tea.example"},
            "order": {"number": "1001"},
            "preheader": "We would love to hear from you",
            "subject": "How is it?",
            "unsubscribe_url": None,
        },
    )
    assert "We would love to hear from you" in html
    assert text.startswith("How is your order #1001?\n\nHi Ada, your order from Tea Corner")
    assert "We would love" not in text and "<" not in text and "Unsubscribe" not in text
    assert (
        html_to_text('<p>Go <a href="https://x.example/a">here</a></p><ul><li>one</li></ul>')
        == "Go here (https://x.example/a)\n\n- one\n"
    )


TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
LIBRARY_CONTEXT: dict = {
    "customer": {"first_name": "Ada", "email": "ada@example.com"},
    "shop": {"name": "Tea & Co", "domain": "tea.example", "email": "hi@tea.example", "currency": "EUR"},
    "order": {
        "number": "1001",
        "total": "12.50",
        "currency": "EUR",
        "line_items": [{"title": "Tea <green>", "quantity": 2, "price": "3.00"}],
    },
    "checkout": {
        "recovery_url": "https://tea.example/r/1",
        "total": "12.00",
        "currency": "EUR",
        "line_items": [{"title": "Mug", "quantity": 1, "price": "9.00"}],
    },
    "unsubscribe_url": "http://localhost:8000/unsubscribe/abc",
    "subject": "Thanks",
    "preheader": "Inside",
    "run": {},
    "event": {},
}


@pytest.mark.parametrize("name", sorted(p.name for p in TEMPLATES.glob("*.html") if p.name != "base.html"))
@pytest.mark.parametrize("shop_email", ["hi@tea.example", None])
def test_a_templates_text_version_reads_like_its_html_converted(
    env: pytest.MonkeyPatch, name: str, shop_email: str | None
) -> None:
    from encore_retention.flows.render import environment, html_to_text, render_email

    code = {"code": "HELLO-7K", "value": "10%", "expires_on": "1 May 2026", "minimum_subtotal": "30.00"}
    context = {**LIBRARY_CONTEXT, "shop": {**LIBRARY_CONTEXT["shop"], "email": shop_email}}
    context.update({var: code for var in ("welcome", "gift", "reward", "code", "discount", "comeback", "thanks")})
    context.update(
        invite_url="https://tea.example/account/activate/1",
        review_url="https://tea.example/reviews",
        feedback_url=lambda score: f"https://encore.example/feedback/t{score}",
    )
    html, text = render_email(name, context)
    assert html == environment().get_template(name).render(context)
    assert text == html_to_text(html)  # one Jinja render per email instead of an HTML parse
    assert "Ada" in text and "<" not in text.replace("Tea <green>", "")


def test_a_text_version_keeps_jinja_it_must_and_falls_back_when_it_cannot(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from encore_retention.core.settings import reset_settings
    from encore_retention.flows import render

    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "odd.html").write_text(
        "<html><head>{% if subject %}<title>{{ subject }}</title>{% endif %}</head><body>"
        "<p>{% if customer.orders_count<3 %}New here{% else %}Welcome back{% endif %}, {{ customer.first_name }}!</p>"
        '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>'
    )
    # A loop opened inside an attribute: the text version loses its start, so it can't compile.
    (folder / "broken.html").write_text('<p data-n="{% for n in numbers %}">{{ n }}</p>{% endfor %}')
    env.setenv("TEMPLATES_DIR", str(folder))
    reset_settings()
    render.reset()
    context = {
        "customer": {"first_name": "Ada", "orders_count": 1},
        "subject": "Hi",
        "unsubscribe_url": "https://x.example/u",
    }
    html, text = render.render_email("odd.html", context)
    assert text == render.html_to_text(html) == "New here, Ada!\n\nUnsubscribe (https://x.example/u)\n"
    html, text = render.render_email("broken.html", {**context, "numbers": [7]})
    assert html == '<p data-n="">7</p>' and text == render.html_to_text(html) == "7\n"
    render.reset()


def test_an_http_step_to_this_machine_is_a_lint_warning_unless_listed(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    text = "name: x\ntrigger:\n  event: order.placed\nsteps:\n  - http:\n      url: http://{host}:6379/\n"
    for host, shown in (
        ("127.0.0.1", "127.0.0.1 is loopback"),
        ("[::ffff:169.254.169.254]", "::ffff:169.254.169.254 is link-local (as 169.254.169.254)"),
        ("2130706433", "2130706433 is loopback"),
        ("localhost", "localhost is loopback"),
    ):
        path = write(tmp_path / "flows", "crm", text.format(host=host))
        result = CliRunner().invoke(main, ["flows", "lint", str(path)])
        assert result.exit_code == 0, result.output
        assert result.stdout == (
            f"{path}:6: warning: http: {shown}: the step will be refused unless HTTP_STEP_ALLOW_HOSTS lists the host\n"
        )
    env.setenv("HTTP_STEP_ALLOW_HOSTS", "localhost")
    reset_settings()
    assert CliRunner().invoke(main, ["flows", "lint", str(path)]).stdout == ""
    path = write(tmp_path / "flows", "crm", text.format(host="hooks.example.com"))
    assert CliRunner().invoke(main, ["flows", "lint", str(path)]).stdout == ""  # a name: judged when resolved


def test_an_http_step_header_that_would_split_the_request_is_a_lint_error(tmp_path: Path) -> None:
    text = (
        "name: x\ntrigger:\n  event: order.placed\nsteps:\n  - http:\n      url: https://hooks.example.com/\n"
        "      headers:\n        {header}\n"
    )
    for header, message in (
        ('X-Token: "a\\r\\nX-Injected: 1"', "the value of header 'X-Token' has a line break"),
        ('"X Bad": "1"', "'X Bad' is not an HTTP header name"),
        ('"X-Nul": "a\\0b"', "the value of header 'X-Nul' has a line break or a NUL"),
    ):
        path = write(tmp_path / "flows", "crm", text.format(header=header))
        result = CliRunner().invoke(main, ["flows", "lint", str(path)])
        assert result.exit_code == 1, result.output
        assert f"{path}:" in result.output and message in result.output, result.output
        assert "Traceback" not in result.output
    path = write(tmp_path / "flows", "crm", text.format(header='X-Token: "{{ shop.domain }}"'))
    assert CliRunner().invoke(main, ["flows", "lint", str(path)]).exit_code == 0


# ---- attribute paths: typos in conditions, text and templates -------------------------------------

TYPOS = """\
name: Typos everywhere
trigger:
  event: order.placed
conditions:
  - customer.frist_name != ''
steps:
  - wait: 3 parsecs
  - create_discount:
      as: reward
      amount: 10
  - if: order.totl > 100
    then:
      - send_email:
          template: typo.html
          subject: "Hi {{ customer.first_nam }}, here is {{ reward.cod }}"
  - tag_customer: [vip]
    send_email: {template: bare.html, subject: x}
"""


def test_lint_checks_every_attribute_path_and_reports_every_error_of_a_file_at_once(
    templates: Path, tmp_path: Path
) -> None:
    (templates / "typo.html").write_text("<p>{{ shop.nmae }}</p>\n<p>{{ checkout['recovery_ur'] }}</p>\n")
    path = write(tmp_path / "flows", "typos", TYPOS)
    result = CliRunner().invoke(main, ["flows", "lint", str(path)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith(str(path))]
    expected = [
        (5, "`customer` has no field `frist_name` (did you mean `first_name`?)"),
        (7, "wait: bad duration '3 parsecs'"),
        (11, "`order` has no field `totl` (did you mean `total`?)"),
        (14, "template 'typo.html': typo.html:1: `shop` has no field `nmae` (did you mean `name`?)"),
        (14, "template 'typo.html': typo.html:2: `checkout` has no field `recovery_ur` (did you mean `recovery_url`?)"),
        (15, "`customer` has no field `first_nam` (did you mean `first_name`?)"),
        (15, "`reward` has no field `cod` (did you mean `code`?)"),
        (16, "one step per list item, found tag_customer, send_email"),
    ]
    for line, fragment in expected:
        assert any(found.startswith(f"{path}:{line}: ") and fragment in found for found in lines), (fragment, lines)
    assert "8 error(s)" in result.output  # the shape errors hid none of the others


def test_a_field_that_exists_passes_and_one_nobody_is_near_lists_the_fields(templates: Path, tmp_path: Path) -> None:
    from encore_retention.flows import fields

    assert fields.problem("customer", "first_name") is None
    assert fields.problem("customer", "get") is None  # the views are dictionaries
    assert fields.problem("now", "anything") is None  # not checked: a datetime
    assert "(its fields: amount, code, expires_at," in (fields.problem("reward", "zzzz", {"reward"}) or "")
    text = "{% for customer in people %}{{ customer.nickname }}{% endfor %}{% set shop = x %}{{ shop.whatever }}"
    assert list(fields.in_text(text)) == []  # names the template binds are its own


def test_the_checked_fields_are_the_views_the_engine_builds() -> None:
    from encore_retention.core.store.models import Customer, Shop
    from encore_retention.flows import fields, steps

    assert fields.CUSTOMER == set(steps.customer_view(Customer()))
    assert fields.SHOP == set(steps.shop_view(Shop(domain="x.example.com")))


def test_an_event_trigger_may_list_events_and_exit_scope_order_needs_exit_on(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    folder = tmp_path / "flows"
    write(folder, "listed", "name: x\ntrigger:\n  event: [order.refunded, order.cancelled]\nsteps:\n  - wait: 1h\n")
    result = CliRunner().invoke(main, ["flows", "lint", str(folder)])
    assert result.exit_code == 0 and "0 error(s), 0 warning(s)" in result.output, result.output
    (flow_file,), _ = loader.load_dir(folder)
    assert isinstance(flow_file.flow.trigger, EventTrigger)
    assert flow_file.flow.trigger.events == ("order.refunded", "order.cancelled")
    assert [f.key for f in loader.Registry({flow_file.key: flow_file}, []).for_event("order.cancelled")] == ["listed"]
    typo = "name: x\ntrigger:\n  event: [order.refunded, order.canceled]\nsteps:\n  - wait: 1h\n"
    path = write(folder, "listed", typo)
    result = CliRunner().invoke(main, ["flows", "lint", str(path)])
    assert result.exit_code == 1
    assert f"{path}:3: unknown event type 'order.canceled'" in result.output, result.output
    scoped = "name: x\ntrigger:\n  event: order.fulfilled\nexit_scope: order\nsteps:\n  - wait: 1h\n"
    path = write(folder, "listed", scoped)
    result = CliRunner().invoke(main, ["flows", "lint", str(path)])
    assert f"{path}:4: warning: exit_scope: order has no effect without `exit_on`" in result.output, result.output

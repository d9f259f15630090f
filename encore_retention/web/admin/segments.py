"""The admin's segments: each one's size, its members a page at a time, its YAML editor, and CSV downloads.

Segments are files beside the flows (`FLOWS_DIR/segments/<name>.yaml`, see `flows.segments`). The
operator edits them here: the text is validated as `encore flows lint` would and, when clean, written
to that file (the flows then read it at their next check). With the built-in library (no FLOWS_DIR)
they can't be saved: the library is part of the installed package. A store's sign-in sees its own
customers only and can't change segments, which every store shares.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Response, abort, g, redirect, render_template, request, stream_with_context, url_for
from sqlalchemy import select

from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Customer, Shop, parse_id
from encore_retention.flows import dates, exports, loader, segments
from encore_retention.web.admin.auth import blueprint

PAGE = 50


def _segment_or_404(name: str) -> segments.SegmentFile:
    """A segment by name, or 404."""
    found = segments.registry().get(name) if segments.NAME.match(name) else None
    if found is None:
        abort(404)
    return found


def member_page(
    db: Any, segment: Any, shop_ids: list[int], after: int, size: int = PAGE
) -> tuple[list[Any], int | None]:
    """One page of members with their store, after the customer id `after` (keyset), and the next page's `after`."""
    where = segments.criteria(segment, shop_ids, dates.now(), segments.dialect_of(db))
    rows = db.execute(
        select(Customer, Shop.domain)
        .join(Shop, Shop.id == Customer.shop_id)
        .where(*where, Customer.id > after)
        .order_by(Customer.id)
        .limit(size + 1)
    ).all()
    following = rows[size - 1][0].id if len(rows) > size else None
    return rows[:size], following


def broken() -> dict[str, list[Any]]:
    """The segment files that don't load, by name, with their problems (the operator fixes them here)."""
    folder = loader.flows_dir()
    found: dict[str, list[Any]] = {}
    for path in segments.segment_files(folder):
        problems = segments.load_file(path)[1]
        if problems:
            found[path.stem] = problems
    return found


def _file_text(name: str) -> str | None:
    """The text of a segment's file in the flows folder, loaded or not."""
    for suffix in (".yaml", ".yml"):
        path = loader.flows_dir() / segments.FOLDER / f"{name}{suffix}"
        if path.is_file():
            return path.read_text(encoding="utf-8", errors="replace")
    return None


@blueprint.get("/segments")
def segments_list():
    """Every segment with its size in the viewer's stores, and the files that don't load."""
    found = segments.registry()
    with session_scope() as db:
        sizes = {name: segments.count(db, item.segment, g.viewer.shop_ids, dates.now()) for name, item in found.items()}
        everyone = segments.count(db, None, g.viewer.shop_ids, dates.now())
    return render_template(
        "admin/segments.html",
        segments=sorted(found.values(), key=lambda item: item.name),
        sizes=sizes,
        everyone=everyone,
        editable=_editable(),
        fields=segments.FIELDS,
        broken=broken(),
    )


@blueprint.get("/segments/<name>")
def segment_page(name: str):
    """A segment's size, a page of its members, and (for the operator) its editor; a file that doesn't load,
    its problems and its text to fix."""
    if segments.NAME.match(name) and name not in segments.registry():
        text = _file_text(name)
        if text is not None:
            return _render(name, text, None, segments.load_text(text, f"segments/{name}.yaml", name)[1])
    found = _segment_or_404(name)
    return _render(found.name, found.text, found, [])


def _render(name: str, text: str, found: segments.SegmentFile | None, problems: list[Any], status: int = 200) -> Any:
    """The segment's page: size, a page of members, the editor with the problems found."""
    raw_after = request.args.get("after", "0")
    after = parse_id(raw_after)
    if after is None:
        abort(400, "not a page")
    rows: list[Any] = []
    following: int | None = None
    size: int | None = None
    if found is not None:
        with session_scope() as db:
            size = segments.count(db, found.segment, g.viewer.shop_ids, dates.now())
            rows, following = member_page(db, found.segment, g.viewer.shop_ids, after)
    page = render_template(
        "admin/segment.html",
        name=name,
        text=text,
        found=found,
        problems=problems,
        size=size,
        rows=rows,
        after=after,
        following=following,
        editable=_editable(),
    )
    return page, status


def _editable() -> bool:
    """Whether the viewer may edit segments here (the operator, with FLOWS_DIR set)."""
    return bool(g.viewer.everything and segments.editable_folder() is not None)


@blueprint.post("/segments")
def new_segment():
    """A new segment from the list page's form (its name, then its YAML)."""
    name = (request.form.get("name") or "").strip()
    if not segments.NAME.match(name):
        abort(400, "a segment's name: a-z, 0-9, - and _ (up to 64)")
    return save_segment(name)


@blueprint.post("/segments/<name>")
def save_segment(name: str):
    """Validate a segment's YAML and, when clean, write it to FLOWS_DIR/segments/<name>.yaml (the operator only)."""
    if not g.viewer.everything:
        abort(403)
    folder = segments.editable_folder()
    if folder is None:
        abort(409, "segments are saved in FLOWS_DIR/segments: set FLOWS_DIR (the built-in library is read-only)")
    text = (request.form.get("text") or "").replace("\r\n", "\n")
    file = f"segments/{name}.yaml"
    loaded, problems = segments.load_text(text, file, name)
    if loaded is None:
        return _render(name, text, segments.registry().get(name), problems, 400)
    write_atomically(folder / f"{name}.yaml", text)
    return redirect(url_for("admin.segment_page", name=name))


def write_atomically(path: Path, text: str) -> None:
    """Replace a file's text in one step (a reader sees the old text or the new, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text if text.endswith("\n") else text + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _download(segment: Any, filename: str) -> Response:
    """A streamed CSV of a segment's members (None: every customer) in the viewer's stores."""
    shop_ids = list(g.viewer.shop_ids)
    now = dates.now()

    def generate() -> Iterator[str]:
        """The CSV, a piece at a time, from a session of its own."""
        with session_scope() as db:
            yield from exports.csv_lines(exports.rows(db, segment, shop_ids, now))

    return Response(
        stream_with_context(generate()),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
    )


@blueprint.get("/segments/<name>/export.csv")
def export_segment(name: str):
    """A segment's members as CSV, streamed."""
    found = _segment_or_404(name)
    return _download(found.segment, f"{found.name}.csv")


@blueprint.get("/customers/export.csv")
def export_customers():
    """Every customer of the viewer's stores as CSV, streamed."""
    return _download(None, "customers.csv")

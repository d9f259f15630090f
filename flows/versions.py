"""Flow versions with their templates: a run renders its emails from the templates of the version it started on.

A flow file's version (`FlowFile.digest`) covers its own text and the source of every template its
emails use (with their layouts, includes and text twins), so editing a template makes a new
version as editing the flow does. The first run of a version stores it here, once; a run waiting on
an older version renders with that version's templates, whatever the files say now. Runs from
before versions were kept render with the files, as they did.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime

from sqlalchemy import String, select
from sqlalchemy.orm import Mapped, mapped_column

from encore_retention.core.store.models import Base, IdType, JSONType, UTCDateTime, utcnow
from encore_retention.core.store.unit import Unit
from encore_retention.flows import loader
from encore_retention.flows.loader import FlowFile
from encore_retention.flows.render import Pinned


class FlowVersion(Base):
    """One version of a flow: its digest and the templates it was loaded with (name -> source)."""

    __tablename__ = "flow_versions"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    flow_key: Mapped[str] = mapped_column(String(128))
    templates: Mapped[dict[str, str]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


_stored: set[str] = set()  # the versions this process knows are stored
_pinned: OrderedDict[str, Pinned] = OrderedDict()  # digest -> its templates, the latest 256 read
_KEEP = 256


def ensure(session: Unit, flow_file: FlowFile) -> None:
    """Store a flow version with its templates, unless this process knows it is stored (once per version)."""
    if flow_file.digest in _stored:
        return
    values = {
        "digest": flow_file.digest,
        "flow_key": flow_file.key,
        "templates": dict(flow_file.templates),
        "created_at": utcnow(),
    }
    session.insert_new(FlowVersion, values, ["digest"], attach=False)
    _stored.add(flow_file.digest)


def pinned(session: Unit, digest: str, flow_key: str) -> Pinned | None:
    """The templates of a flow version; None for a run from before versions kept them (it renders the files).

    A version not stored (its first run's transaction was rolled back after this process stored it) is
    stored now when it is the flow's current one.
    """
    found = _pinned.get(digest)
    if found is not None:
        _pinned.move_to_end(digest)
        return found
    templates = session.execute(select(FlowVersion.templates).where(FlowVersion.digest == digest)).scalar()
    if templates is None:
        current = loader.registry().flows.get(flow_key)
        if current is None or current.digest != digest:
            return None
        _stored.discard(digest)
        ensure(session, current)
        templates = current.templates
    found = _pinned[digest] = Pinned(digest, dict(templates))
    if len(_pinned) > _KEEP:
        _pinned.popitem(last=False)
    return found


def forget() -> None:
    """Forget what this process read and stored (tests, after a database change)."""
    _stored.clear()
    _pinned.clear()

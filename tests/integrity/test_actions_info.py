"""Every action carries its ECS categorisation in its own definition, and the records built
for it say what it carries."""

from __future__ import annotations

import copy
import pickle

import orjson
import pytest

from audit.integrity import record as f
from audit.integrity.chain import ChainWriter
from audit.integrity.errors import InvalidInputError
from audit.integrity.events import ActionInfo, EventAction, Outcome, parse_action
from audit.integrity.keys import Signer

from .conftest import T0

# The ECS allowed values (ECS 8.x): a category or type outside them breaks ECS consumers.
ECS_CATEGORIES = frozenset(
    {
        "api",
        "authentication",
        "configuration",
        "database",
        "driver",
        "email",
        "file",
        "host",
        "iam",
        "intrusion_detection",
        "library",
        "malware",
        "network",
        "package",
        "process",
        "registry",
        "session",
        "threat",
        "vulnerability",
        "web",
    }
)
ECS_TYPES = frozenset(
    {
        "access",
        "admin",
        "allowed",
        "change",
        "connection",
        "creation",
        "deletion",
        "denied",
        "end",
        "error",
        "group",
        "indicator",
        "info",
        "installation",
        "protocol",
        "start",
        "user",
    }
)
ECS_KINDS = frozenset(
    {"alert", "asset", "enrichment", "event", "metric", "pipeline_error", "signal", "state"}
)


@pytest.mark.parametrize("action", list(EventAction), ids=str)
def test_every_action_has_its_info(action: EventAction) -> None:
    info = action.info
    assert isinstance(info, ActionInfo)
    assert isinstance(info.critical, bool)
    assert info.category
    assert set(info.category) <= ECS_CATEGORIES
    assert info.type
    assert set(info.type) <= ECS_TYPES
    assert info.kind in ECS_KINDS
    assert (action.critical, action.category, action.kind) == (
        info.critical,
        info.category,
        info.kind,
    )


@pytest.mark.parametrize("action", list(EventAction), ids=str)
def test_a_record_of_each_action_carries_its_category_and_type(
    action: EventAction, signer: Signer
) -> None:
    writer = ChainWriter("s1", "acme", signer)
    (sealed,) = writer.append(action, Outcome.SUCCESS, {"message": "m"}, T0)
    record = orjson.loads(sealed.line)
    assert record[f.EVENT_ACTION] == action.value
    assert record[f.EVENT_CATEGORY] == list(action.info.category)
    assert record[f.EVENT_TYPE] == list(action.info.type)
    assert record[f.EVENT_KIND] == action.info.kind


def test_the_member_is_still_its_string() -> None:
    action = EventAction.JOB_SUBMITTED
    assert action == "job.submitted"
    assert action.value == "job.submitted"
    assert str(action) == f"{action}" == "job.submitted"
    assert orjson.dumps(action) == b'"job.submitted"'
    assert EventAction("job.submitted") is action
    assert pickle.loads(pickle.dumps(action)) is action  # noqa: S301 - our own bytes
    assert copy.deepcopy(action) is action
    with pytest.raises(ValueError, match="not a valid"):
        EventAction("job.nope")


def test_parse_action_is_unchanged() -> None:
    reserved = {EventAction.AUDIT_CHECKPOINT, EventAction.AUDIT_RATE_LIMITED}
    for action in EventAction:
        if action in reserved:
            with pytest.raises(InvalidInputError, match="reserved"):
                parse_action(action.value)
        else:
            assert parse_action(action.value) is action
    assert parse_action("face_swap") is EventAction.FACE_SWAPPED
    with pytest.raises(InvalidInputError, match="unknown action"):
        parse_action("face.melted")

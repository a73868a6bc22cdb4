"""The operator's logs (issue 19, item 6): JSON lines through Kopf's logging integration
(``main.configure_logging``), every line about an object carrying its kind, namespace, name and
uid (and a FineTuneJob's revision), human text with a ``[namespace/name]`` prefix on a terminal.
Driven through the real reconcile and work queue, read back as a log collector would."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import logging
from typing import Any, Iterator

import pytest

from ftj_helpers import MINIMAL_SPEC, defaulted_spec
from test_gang_reconcile import FakeKube, _job
from tuneforge.finetune.handlers import work_queue
from tuneforge.finetune.reconcile import Room, reconcile
from tuneforge.main import configure_logging
from tuneforge.runtime import Runtime, pack
from tuneforge.settings import Settings

NS, NAME, UID = "team-a", "gang", "ftj-uid"
REF = {"apiVersion": "tuneforge.dev/v1alpha1", "kind": "FineTuneJob", "namespace": NS, "name": NAME, "uid": UID}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _room(kube: Any) -> Room:
    body = {"apiVersion": "tuneforge.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1},
            "spec": defaulted_spec(copy.deepcopy(MINIMAL_SPEC)), "status": {}}
    room = Room(rt=Runtime(Settings(trainer_image="t:1"), kube, lambda *a: None), ftjs={}, jobs={}, pods={})
    room.ftjs = {(NS, NAME): [pack(body)]}
    room.jobs = {(NS, NAME): [pack(_job(f"{NAME}-validate-1", "v", "Complete"))]}
    return room


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_lines_about_an_object_are_json_with_its_reference_and_revision(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(False, stream)
    kube = FakeKube()
    asyncio.run(reconcile(_room(kube), (NS, NAME)))
    assert ("create Job", f"{NAME}-train-1") in kube.calls
    created = [line for line in _lines(stream) if line["message"].startswith("Created training Job")]
    assert created, stream.getvalue()
    line = created[0]
    assert line["message"] == f"Created training Job {NS}/{NAME}-train-1"
    assert line["object"] == REF and line["revision"] == 1 and line["severity"] == "info" and line["timestamp"]
    # A line about nothing in particular is a JSON line too, without an object.
    logging.getLogger("tuneforge.leader").info("Leader Lease acquired by %s", "replica-a")
    last = _lines(stream)[-1]
    assert last["message"] == "Leader Lease acquired by replica-a" and "object" not in last


def test_a_failed_reconcile_names_its_object(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(False, stream)

    class Refusing(FakeKube):
        async def create(self, obj: dict[str, Any]) -> bool:
            raise ValueError("refused by a webhook")

    async def one_pass() -> None:
        queue = work_queue(_room(Refusing()))
        await queue.run((NS, NAME))
        queue.forget((NS, NAME))

    asyncio.run(one_pass())
    failed = [line for line in _lines(stream) if line["message"].startswith("Reconcile of FineTuneJob")]
    assert failed and failed[0]["object"] == REF and failed[0]["severity"] == "error", stream.getvalue()
    assert "refused by a webhook" in failed[0]["message"] and "ValueError" in failed[0]["exc_info"]


def test_a_terminal_gets_text_prefixed_with_the_object(restore_logging: None) -> None:
    stream = Terminal()
    configure_logging(False, stream)
    asyncio.run(reconcile(_room(FakeKube()), (NS, NAME)))
    text = stream.getvalue()
    line = next(line for line in text.splitlines() if "Created training Job" in line)
    assert f"[INFO    ] [{NS}/{NAME}] Created training Job {NS}/{NAME}-train-1" in line
    assert not line.lstrip().startswith("{")

"""The debug model's fault markers act only with `--debug-faults` (issue 10 point 9).

Without the flag anyone who can reach a debug-model server could stall its batcher with
`[[sleep:600]]` or end the process with `[[crash]]`; now a marker is plain text unless asked for.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.serverproc import ServerProcess, post_json
from trio_infer.config import load_settings
from trio_infer.models.debug import CollectorCrash, DebugEmbedder, DebugModelError

MARKED = ["[[sleep:600]] [[fail]] [[crash]] marker text"]


async def test_markers_are_plain_text_by_default() -> None:
    model = DebugEmbedder()
    with_markers = await model.embed(MARKED, await model.tokenize(MARKED))
    assert np.isclose(np.linalg.norm(with_markers[0]), 1.0)
    assert not np.allclose(with_markers[0], (await model.embed(["other"], [[101, 102]]))[0])


async def test_markers_act_when_faults_are_on() -> None:
    model = DebugEmbedder(faults=True)
    with pytest.raises(CollectorCrash):
        await model.embed(["[[crash]]"], [[101, 102]])
    with pytest.raises(DebugModelError):
        await model.embed(["[[fail]]"], [[101, 102]])


def test_the_flag_and_its_environment_variable() -> None:
    assert load_settings([], env={}).debug_faults is False
    assert load_settings(["--debug-faults"], env={}).debug_faults is True
    assert load_settings([], env={"DEBUG_FAULTS": "1"}).debug_faults is True
    assert load_settings(["--debug-faults=off"], env={"DEBUG_FAULTS": "true"}).debug_faults is False


@pytest.mark.e2e
async def test_a_server_without_the_flag_answers_marker_texts() -> None:
    with ServerProcess() as server:
        for text in ("[[crash]] end the process", "[[fail]] poison", "[[sleep:600]] stall"):
            response = await post_json(server.port, "/embed", {"input_text": text}, limit=20)
            assert response.status == 200, response
        assert server.proc is not None and server.proc.poll() is None

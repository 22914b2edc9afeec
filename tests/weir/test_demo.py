"""``weir demo`` on the test broker: its follow-up questions see their conversations."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from weir.demo import FOLLOW_UPS, _run


@pytest.mark.kafka
async def test_the_demo_answers_follow_ups_in_their_conversations(kafka):
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, soft_wrap=True)
    await _run(kafka, 6, console)
    text = buffer.getvalue()
    assert "follow-up questions in the same conversations" in text
    after = text.split("follow-up questions")[1]
    assert len(re.findall(r"-> (.*)", after)) == len(FOLLOW_UPS)
    # Each customer asked a dispute question before: the follow-up's draft knew of it.
    drafts = re.findall(r"conversation: (\d+) turns; the draft: (.*)", after)
    assert len(drafts) == len(FOLLOW_UPS), text
    for turns, draft in drafts:
        assert int(turns) >= 4 and draft.startswith("Following up on your"), text
    assert re.search(r"handled by AI \d+%, escalated \d+%", text)

"""Which turns of a data set are scored, read as training reads rows: every assistant turn (or the last of each row),
answered from the reference history before it. Rows that cannot be scored are counted with `file:line` and why."""

import os
from dataclasses import dataclass, field

from ..data import Conversation, UnusableRow, load_rows, row_conversation, text_of

TRANSCRIPTION_TASKS = {"transcription", "transcribe", "asr"}


@dataclass
class ScoredTurn:
    """One assistant turn to predict: where it is (`file`, `line`, its number among the row's answers, from 1),
    how it is grouped, its reference answer, and the conversation whose messages before `message` are its prompt."""

    file: str
    line: int
    turn: int
    message: int
    reference: str
    conversation: Conversation
    groups: dict = field(default_factory=dict)
    transcription: bool = False
    choices: list | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return self.file, self.line, self.turn

    def skipped(self, reason: str) -> dict:
        """The record of this turn when it cannot be predicted."""
        return {"key": self.key, "skipped": {"where": f"{self.file}:{self.line}", "turn": self.turn, "reason": reason}}

    def record(self) -> dict:
        """What `predictions.jsonl` says of the turn, before its prediction."""
        extra = {"choices": self.choices} if self.choices else {}
        return {"file": self.file, "line": self.line, "turn": self.turn, **self.groups,
                "transcription": self.transcription, **extra, "reference": self.reference}  # fmt: skip


def scored_turns(paths, turns: str = "all", group_by=("kind", "language")) -> tuple[list[ScoredTurn], list[dict]]:
    """The turns to score in the data at `paths` (files or folders in every form training reads), and the skipped
    rows (`{"where": "file:line", "reason": ...}`)."""
    if turns not in ("all", "last"):
        raise ValueError(f"turns must be 'all' or 'last'; got {turns!r}")
    scored, skipped = [], []
    for path in paths:
        for index, row in enumerate(load_rows(path)):
            file = os.path.join(row.get("_base_dir", ""), row.get("_row_id", f"?:{index + 1}").rsplit(":", 1)[0])
            line = int(row.get("_row_id", f"?:{index + 1}").rsplit(":", 1)[1])
            try:
                conversation = row_conversation(row, index)
            except UnusableRow as error:
                skipped.append({"where": f"{file}:{line}", "reason": str(error).split(": ", 1)[-1]})
                continue
            answers = [
                number
                for number, message in enumerate(conversation.messages)
                if message["role"] == "assistant"
                and number > 0
                and conversation.messages[number - 1]["role"] == "user"
            ]
            if not answers:
                skipped.append({"where": f"{file}:{line}", "reason": "no assistant turn after a user turn to score"})
                continue
            groups = {name: _group_value(row.get(name)) for name in group_by}
            task = str(row.get("task") or row.get("kind") or "").casefold()
            choices = row.get("choices") if isinstance(row.get("choices"), list) and row.get("choices") else None
            numbered = list(enumerate(answers, start=1))
            for turn, message in numbered[-1:] if turns == "last" else numbered:
                reference = text_of(conversation.messages[message]["content"]).strip()
                scored.append(
                    ScoredTurn(
                        file,
                        line,
                        turn,
                        message,
                        reference,
                        conversation,
                        groups,
                        task in TRANSCRIPTION_TASKS,
                        choices,
                    )  # fmt: skip
                )
    return scored, skipped


def _group_value(value) -> str:
    return "(none)" if value is None or value == "" else str(value)


__all__ = ["ScoredTurn", "scored_turns", "TRANSCRIPTION_TASKS"]

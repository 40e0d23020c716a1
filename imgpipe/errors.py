"""The one error type for user mistakes: what is wrong, where, and how to fix it."""

from __future__ import annotations


class ImgpipeError(Exception):
    """A user-facing error. The CLI prints it without a traceback and exits 2.

    ``where`` names the file (and key) at fault, ``hint`` says how to fix it.
    """

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class PlanErrors(ImgpipeError):
    """Several independent problems found while planning, reported together."""

    def __init__(self, problems: list[str], *, hint: str | None = None):
        self.problems = list(problems)
        head = f"{len(self.problems)} problem(s) in the plan:" if len(self.problems) > 1 else ""
        body = "\n".join(f"  - {p}" for p in self.problems) if head else self.problems[0]
        super().__init__(f"{head}\n{body}" if head else body, hint=hint)

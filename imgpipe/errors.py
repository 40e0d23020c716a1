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

    SHOWN = 30  # a plan over 10,000 MSs must not print 10,000 lines

    def __init__(self, problems: list[str], *, hint: str | None = None):
        self.problems = list(problems)
        head = f"{len(self.problems)} problem(s) in the plan:" if len(self.problems) > 1 else ""
        lines = [f"  - {p}" for p in self.problems[: self.SHOWN]]
        if len(self.problems) > self.SHOWN:
            lines.append(f"  ... and {len(self.problems) - self.SHOWN} more")
        body = "\n".join(lines) if head else self.problems[0]
        super().__init__(f"{head}\n{body}" if head else body, hint=hint)

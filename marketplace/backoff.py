"""The one backoff formula: the wait before the next try doubles from `base` at each failed
attempt, up to `cap`. Each outbox and retrying task names its own schedule with it."""

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class Backoff:
    base: float
    cap: float

    def seconds(self, attempts: int) -> float:
        """The wait after `attempts` failed attempts (1 or more): base, twice base, four
        times base and so on, at most cap."""
        return min(self.base * 2 ** max(attempts - 1, 0), self.cap)

    def delay(self, attempts: int) -> timedelta:
        return timedelta(seconds=self.seconds(attempts))

"""A progress bar for long loops (rich, which comes with flax); ``enabled=False`` silences it."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Bar:
    """``with Bar(total) as bar: bar.update(done, loss=...)``; shows the latest named values."""

    def __init__(self, total: int, *, enabled: bool = True, description: str = ""):
        self.enabled = enabled
        self._values: dict[str, float] = {}
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[values]}"),
            disable=not enabled,
        )
        self._task = self._progress.add_task(description, total=total, values="")

    def __enter__(self) -> Bar:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def update(self, completed: int, **values: float) -> None:
        self._values.update(values)
        text = "  ".join(f"{name} {value:.4g}" for name, value in self._values.items())
        self._progress.update(self._task, completed=completed, values=text)

"""What the UI's tabs are handed: the open store, the job runner and the app's settings (passed in, never global)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stpp.jobs import JobRunner
from stpp.store import Store


@dataclass(frozen=True)
class Settings:
    """How the app was started.

    Attributes:
        host: the address the server binds.
        port: the port it listens on.
        workspace: the workspace folder (``STPP_HOME``).
        demo_dir: the shipped demo dataset, or None.
    """

    workspace: Path
    host: str = "127.0.0.1"
    port: int = 7860
    demo_dir: Path | None = None


@dataclass(frozen=True)
class Services:
    """Everything a tab's handlers may use.

    Attributes:
        store: the project store.
        settings: the app's settings.
        jobs: the job runner over ``store`` (one is made when none is given).
    """

    store: Store
    settings: Settings
    jobs: JobRunner = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.jobs is None:
            object.__setattr__(self, "jobs", JobRunner(self.store))

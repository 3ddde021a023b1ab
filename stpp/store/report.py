"""The per-file outcome of an import: what was added, what was skipped or refused, and why."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FileResult:
    """What happened to one input.

    Attributes:
        name: the image name (file stem) the input belongs to, or the file name for inputs that
            are not images (an archive, a stray text file).
        source: the input file: a path, or ``ARCHIVE.zip:ENTRY`` for a file inside an archive.
        status: ``added``; ``skipped`` (nothing to do: already in the project, a duplicate, a file
            that is not data); ``failed`` (bad input, not added).
        reason: why it was skipped or failed; for ``added``, the role, the mask and any conversion.
    """

    name: str
    source: str
    status: str
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.status}: {self.source}" + (f": {self.reason}" if self.reason else "")


@dataclass
class ImportReport:
    """The per-file outcome of one import, in input order.

    Attributes:
        results: one :class:`FileResult` per input.
        notes: remarks about the import as a whole (e.g. which classes were assumed).
    """

    results: list[FileResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, source: str, status: str, reason: str = "") -> None:
        """Record one outcome."""
        self.results.append(FileResult(name, source, status, reason))

    def by_status(self, status: str) -> list[FileResult]:
        """The results with this status."""
        return [r for r in self.results if r.status == status]

    @property
    def added(self) -> list[FileResult]:
        """Inputs that were added."""
        return self.by_status("added")

    @property
    def skipped(self) -> list[FileResult]:
        """Inputs with nothing to do (already there, duplicates, non-data files)."""
        return self.by_status("skipped")

    @property
    def failed(self) -> list[FileResult]:
        """Inputs refused, each with its reason."""
        return self.by_status("failed")

    def for_name(self, name: str) -> list[FileResult]:
        """The results about one image name."""
        return [r for r in self.results if r.name == name]

    def summary(self) -> str:
        """One line: how many files were added, skipped and failed."""
        return f"{len(self.added)} added, {len(self.skipped)} skipped, {len(self.failed)} failed"

"""Readers for the benchmarks' real on-disk formats (one module per data set)."""

from __future__ import annotations


class SourceFormatError(ValueError):
    """A source file is not in the expected format. The message names the file and the problem."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem

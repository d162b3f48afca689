"""Notebooks for the notebook-http tests (and the benchmark), written for them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def notebook(
    cells: list[str | tuple[str, str]], kernel: str = "python3", language: str = "python"
) -> dict[str, Any]:
    """An nbformat 4 notebook of ``cells``: code sources, or (cell_type, source) pairs."""
    out = []
    for cell in cells:
        kind, source = cell if isinstance(cell, tuple) else ("code", cell)
        entry: dict[str, Any] = {
            "cell_type": kind,
            "metadata": {},
            "source": source.splitlines(True),
        }
        if kind == "code":
            entry.update(outputs=[], execution_count=None)
        out.append(entry)
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": kernel, "display_name": kernel, "language": language},
            "language_info": {"name": language},
        },
        "cells": out,
    }


def write_notebook(path: Path, cells: list[str | tuple[str, str]], **kwargs: Any) -> str:
    path.write_text(json.dumps(notebook(cells, **kwargs), indent=1))
    return str(path)

"""Builds random-weight Sambert-HifiGan folders (both layouts) under a tmp dir for the sambert tests."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from app.sambert.synthetic import FolderSpec, write_model_folder

__all__ = ["FolderSpec", "make_folder"]


def make_folder(tmp_path: Path, name: str = "model", **spec_fields) -> Path:
    """Write a folder `tmp_path/name` from FolderSpec fields (tiny, current layout, one voice by default)."""
    return write_model_folder(tmp_path / name, replace(FolderSpec(), **spec_fields))

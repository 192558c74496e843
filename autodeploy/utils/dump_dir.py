"""A directory that tools write dumps into, which may also hold the user's own files.

The files a dump wrote are listed in a manifest (``.autodeploy-dump-manifest``) inside the
directory. A new dump removes only those files, and never overwrites a file it did not write.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

MANIFEST_NAME = ".autodeploy-dump-manifest"


class DumpDirectory:
    """Write files into ``directory``, deleting and overwriting only what earlier dumps wrote."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self.manifest = self.directory / MANIFEST_NAME

    def written_before(self) -> list[str]:
        """File names the manifest lists (written by an earlier dump)."""
        if not self.manifest.is_file():
            return []
        return [line for line in self.manifest.read_text().splitlines() if line.strip()]

    def clear_previous(self) -> None:
        """Remove the files earlier dumps wrote (and only those); create the directory."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for name in self.written_before():
            path = self.directory / name
            if path.parent == self.directory and path.is_file():  # names never leave the dir
                path.unlink()
        self.manifest.write_text("")

    def write_text(self, name: str, text: str) -> Path:
        """Write ``name`` (a plain file name) and record it in the manifest."""
        path = self.directory / name
        if path.exists() and name not in self.written_before():
            raise ConfigError(
                f"{str(path)!r} exists and was not written by an autodeploy dump; it is left "
                "alone. Dump into an empty or new directory, or move that file away."
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if name not in self.written_before():
            with self.manifest.open("a") as manifest:
                manifest.write(name + "\n")
        return path

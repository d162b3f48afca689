"""Type-check the installed shape of the package from its sources (called by .ci/run).

setuptools' package-dir puts launchers/ and actors/ under the raygate import name, which mypy
cannot follow in the source tree. So this links that shape (build/mypy-tree/raygate/...) to the
source files, runs mypy on it with pyproject.toml's [tool.mypy], and names the source files
again in what mypy reports. Arguments are passed on to mypy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "mypy-tree"


def link_tree() -> dict[str, str]:
    """Link TREE/raygate to the sources; returns each linked prefix -> its source prefix."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {
        package.split(".", 1)[1]: folder
        for package, folder in setuptools.get("package-dir", {}).items()
        if package.startswith("raygate.")
    }
    shutil.rmtree(TREE, ignore_errors=True)
    (TREE / "raygate").mkdir(parents=True)
    for entry in (ROOT / "raygate").iterdir():
        (TREE / "raygate" / entry.name).symlink_to(entry)
    prefixes = {}
    for name, folder in mapped.items():
        (TREE / "raygate" / name).symlink_to(ROOT / folder)
        prefixes[f"{TREE}/raygate/{name}/"] = f"{folder}/"
    prefixes[f"{TREE}/raygate/"] = "raygate/"
    return prefixes


def main() -> int:
    prefixes = link_tree()
    env = {**os.environ, "MYPYPATH": str(TREE)}
    command = [sys.executable, "-m", "mypy", "--show-absolute-path", "-p", "raygate", *sys.argv[1:]]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    for stream, text in ((sys.stdout, done.stdout), (sys.stderr, done.stderr)):
        for line in text.splitlines(keepends=True):
            # the longest prefix first: build/mypy-tree/raygate/launchers/ before .../raygate/
            for prefix in sorted(prefixes, key=len, reverse=True):
                if line.startswith(prefix):
                    line = prefixes[prefix] + line[len(prefix) :]
                    break
            stream.write(line)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())

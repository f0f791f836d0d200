"""The stand-in's ``/__modal/.bin/modal-sandbox-fs-tools``: one JSON command, run as a real process.

``modal.Sandbox.filesystem`` execs that binary with one JSON argument (``{"ReadFile":
{"path": ...}}``, ``WriteFile``, ``ListFiles``, ``Remove``, ``MakeDirectory``, ``Stat``);
file content goes through stdin and stdout, listings are JSON on stdout, and failures are
a JSON ``{"error_kind", "message"}`` on stderr with a non-zero exit. Sandbox paths are
absolute; this stand-in maps them under ``--root`` (the sandbox's own folder on this
machine), so one sandbox never sees another's files.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import sys
from pathlib import Path, PurePosixPath

CHUNK = 1024 * 1024


class Failure(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def host(root: Path, path: str) -> Path:
    pure = PurePosixPath(path)
    if not pure.is_absolute() or ".." in pure.parts:
        raise Failure("InvalidPath", "path must be absolute, without '..'")
    return root.joinpath(*pure.parts[1:])


def entry(root: Path, path: Path) -> dict[str, object]:
    info = path.lstat()
    kind = ("symlink" if stat.S_ISLNK(info.st_mode) else
            "directory" if stat.S_ISDIR(info.st_mode) else "file")
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = str(info.st_uid)
    return {"name": path.name, "path": "/" + path.relative_to(root).as_posix(), "type": kind,
            "size": info.st_size, "mode": stat.S_IMODE(info.st_mode),
            "permissions": stat.filemode(info.st_mode), "owner": owner, "group": str(info.st_gid),
            "modified_time": info.st_mtime,
            "symlink_target": os.readlink(path) if kind == "symlink" else None}


def run(root: Path, command: dict[str, dict[str, object]]) -> None:
    (name, args), = command.items()
    target = host(root, str(args["path"]))
    try:
        if name == "ReadFile":
            if target.is_dir():
                raise Failure("IsDirectory", "Is a directory")
            with open(target, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    sys.stdout.buffer.write(chunk)
        elif name == "WriteFile":
            if target.is_dir():
                raise Failure("IsDirectory", "Is a directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as fh:
                while chunk := sys.stdin.buffer.read(CHUNK):
                    fh.write(chunk)
        elif name == "ListFiles":
            if not target.is_dir():
                raise Failure("NotDirectory" if target.exists() else "NotFound",
                              "Not a directory" if target.exists() else "No such file or directory")
            json.dump([entry(root, p) for p in sorted(target.iterdir())], sys.stdout)
        elif name == "Stat":
            json.dump(entry(root, target), sys.stdout)
        elif name == "MakeDirectory":
            target.mkdir(parents=bool(args.get("create_parents", True)),
                         exist_ok=bool(args.get("create_parents", True)))
        elif name == "Remove":
            if target.is_dir() and not target.is_symlink():
                if args.get("recursive"):
                    shutil.rmtree(target)
                else:
                    target.rmdir()
            else:
                target.unlink()
        else:
            raise Failure("Unsupported", f"the stand-in's fs tools do not serve {name}")
    except FileNotFoundError:
        raise Failure("NotFound", "No such file or directory") from None
    except FileExistsError:
        raise Failure("PathAlreadyExists", "File exists") from None
    except NotADirectoryError:
        raise Failure("NotDirectory", "Not a directory") from None
    except PermissionError:
        raise Failure("PermissionDenied", "Permission denied") from None
    except OSError as exc:
        if exc.errno == 39:
            raise Failure("DirectoryNotEmpty", "Directory not empty") from None
        raise Failure("Io", str(exc)) from None


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "--root":
        print("usage: fs_tools.py --root ROOT JSON", file=sys.stderr)
        return 2
    try:
        run(Path(argv[1]), json.loads(argv[2]))
    except Failure as failure:
        json.dump({"error_kind": failure.kind, "message": str(failure)}, sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""ferry's state folder (`.ferry/` beside the routes file): private to the user who runs ferry.

The folder is 0700 and must belong to that user; every file ferry writes there is 0600 and opened without
following a symlink (another user cannot plant one to make ferry overwrite a file elsewhere). It holds the
revision history, the data plane's records, logs, and the secrets ferry makes for itself: the API token
(`api-token`) and the key gateways add to requests for the activator (`activator-key`).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

API_TOKEN = "api-token"
ACTIVATOR_KEY = "activator-key"


def _known_apis() -> Path:
    """Where `ferry up` notes, per API address, which token file it uses (the user's own runtime folder)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or Path.home() / ".cache"
    return Path(base) / "ferry" / "apis"


def _api_note(address: str) -> str:
    return address.replace(":", "_").replace("/", "_").replace("[", "").replace("]", "")


def remember_api(address: str, token_file: Path) -> None:
    """Note that the API at `address` wants the token in `token_file` (the path, never the token), so that `ferry
    status` and friends find it from any folder. Best effort: a home that cannot be written only costs that."""
    try:
        folder = prepare(_known_apis())
        write_private(folder / _api_note(address), str(token_file.absolute()).encode())
    except OSError:
        pass


def token_file_for(address: str) -> Path | None:
    """The token file `ferry up` noted for the API at `address`, if any."""
    try:
        fd = os.open(_known_apis() / _api_note(address), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return Path(os.read(fd, 4096).decode().strip())
    finally:
        os.close(fd)


def prepare(folder: Path) -> Path:
    """Create the folder (0700) or check it: not a symlink, owned by this user, closed to others."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"the state folder {folder} is not a plain folder (a symlink?): refusing to use it")
    if info.st_uid != os.getuid():
        raise PermissionError(f"the state folder {folder} belongs to another user (uid {info.st_uid}): refusing "
                              "to use it; give ferry a folder of your own with --state")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(folder, 0o700)
    return folder


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_APPEND | os.O_CREAT) -> int:
    """A file descriptor on `path`, 0600, never through a symlink."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def write_private(path: Path, data: bytes) -> None:
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def secret(folder: Path, name: str, given: Path | None = None) -> str:
    """A secret ferry keeps in the folder (made on first use, 32 random bytes), or the one in file `given`."""
    path = given or folder / name
    try:  # a file the user named may be a symlink (a Kubernetes Secret volume is made of them); ferry's own not
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (0 if given is not None else os.O_NOFOLLOW))
    except FileNotFoundError:
        if given is not None:
            raise
        value = secrets.token_urlsafe(32)
        write_private(path, value.encode() + b"\n")
        return value
    try:
        value = os.read(fd, 4096).decode().strip()
    finally:
        os.close(fd)
    if not value:
        raise ValueError(f"{path} is empty: delete it (ferry makes a new one) or put the secret in it")
    return value

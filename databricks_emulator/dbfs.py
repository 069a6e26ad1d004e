"""DBFS 2.0 (``put``, ``create``/``add-block``/``close``, ``read``, ``get-status``, ``list``, ``mkdirs``,
``delete``; 1 MB block / read limits as documented) and the ``/dbfs/...`` / ``dbfs:/...`` path
translation into the emulator's storage folder."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import threading
from pathlib import Path, PurePosixPath
from typing import Any

from databricks_emulator.errors import ApiError, bad

MAX_BLOCK = 1024 * 1024


class DbfsApi:
    """The DBFS part of :class:`~databricks_emulator.server.DatabricksEmulator` (a mixin: the emulator
    sets these attributes)."""

    dbfs_root: Path
    _lock: threading.RLock
    _next_id: int  # shared with run ids, as one id sequence
    _handles: dict[int, tuple[PurePosixPath, bytearray]]

    def dbfs_local(self, path: str) -> Path:
        """``/x``, ``dbfs:/x`` or ``/dbfs/x`` -> the file in the emulator's storage."""
        if not isinstance(path, str) or not path:
            raise bad("Path must be a non-empty string.")
        if path.startswith("dbfs:"):
            path = path[len("dbfs:"):]
        if path.startswith("/dbfs/"):
            path = path[len("/dbfs"):]
        pure = PurePosixPath(path)
        if not pure.is_absolute():
            raise bad(f"Path must be absolute: {path}")
        if ".." in pure.parts:
            raise bad(f"Path must not contain '..': {path}")
        return self.dbfs_root.joinpath(*pure.parts[1:])

    def _translate(self, parameter: Any) -> str:
        text = str(parameter)
        if text.startswith("/dbfs/") or text.startswith("dbfs:/"):
            return str(self.dbfs_local(text))
        return text

    @staticmethod
    def _missing(path: str) -> ApiError:
        return ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"No file or directory exists on path {path}.")

    def _file_info(self, api_path: str, local: Path) -> dict[str, Any]:
        stat = local.stat()
        return {
            "path": api_path,
            "is_dir": local.is_dir(),
            "file_size": 0 if local.is_dir() else stat.st_size,
            "modification_time": int(stat.st_mtime * 1000),
        }

    def dbfs(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        path = body.get("path")
        if action == "put":
            local = self.dbfs_local(path)
            data = base64.b64decode(body.get("contents") or "")
            if len(data) > MAX_BLOCK:
                raise ApiError(400, "MAX_BLOCK_SIZE_EXCEEDED", "The contents exceed 1 MB; use create/add-block/close.")
            self._check_writable(path, local, bool(body.get("overwrite")))
            _atomic_write(local, data)
            return {}
        if action == "create":
            local = self.dbfs_local(path)
            self._check_writable(path, local, bool(body.get("overwrite")))
            with self._lock:
                self._next_id += 1
                handle = self._next_id
                self._handles[handle] = (PurePosixPath(str(path)), bytearray())
            return {"handle": handle}
        if action == "add-block":
            data = base64.b64decode(body.get("data") or "")
            if len(data) > MAX_BLOCK:
                raise ApiError(400, "MAX_BLOCK_SIZE_EXCEEDED", "A block may hold at most 1 MB.")
            with self._lock:
                entry = self._handles.get(int(body.get("handle", -1)))
                if entry is None:
                    raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"No stream with handle {body.get('handle')}.")
                entry[1].extend(data)
            return {}
        if action == "close":
            with self._lock:
                entry = self._handles.pop(int(body.get("handle", -1)), None)
            if entry is None:
                raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"No stream with handle {body.get('handle')}.")
            _atomic_write(self.dbfs_local(str(entry[0])), bytes(entry[1]))
            return {}
        if action == "read":
            local = self.dbfs_local(path)
            offset = int(body.get("offset") or 0)
            length = int(body.get("length") or 0) or 0
            if offset < 0 or length < 0:
                raise bad("offset and length must not be negative.")
            if length > MAX_BLOCK:
                raise ApiError(400, "MAX_READ_SIZE_EXCEEDED", "Cannot read more than 1 MB at a time.")
            if not local.exists():
                raise self._missing(path)
            if local.is_dir():
                raise ApiError(400, "NOT_A_FILE", f"Path {path} is a directory.")
            with open(local, "rb") as handle:
                handle.seek(offset)
                data = handle.read(length or MAX_BLOCK)
            return {"bytes_read": len(data), "data": base64.b64encode(data).decode()}
        if action == "get-status":
            local = self.dbfs_local(path)
            if not local.exists():
                raise self._missing(path)
            return self._file_info(_api_path(path), local)
        if action == "list":
            local = self.dbfs_local(path)
            if not local.exists():
                raise self._missing(path)
            if local.is_file():
                return {"files": [self._file_info(_api_path(path), local)]}
            base = _api_path(path).rstrip("/")
            return {
                "files": [self._file_info(f"{base}/{child.name}", child) for child in sorted(local.iterdir())
                          if not child.name.startswith(".tmp-")]
            }
        if action == "mkdirs":
            local = self.dbfs_local(path)
            if local.is_file():
                raise ApiError(400, "RESOURCE_ALREADY_EXISTS", f"A file already exists at path {path}.")
            local.mkdir(parents=True, exist_ok=True)
            return {}
        if action == "delete":
            local = self.dbfs_local(path)
            if not local.exists():
                return {}
            if local.is_dir():
                if any(local.iterdir()) and not body.get("recursive"):
                    raise ApiError(400, "IO_ERROR", f"Path {path} is a non-empty directory; set recursive=true.")
                shutil.rmtree(local)
            else:
                local.unlink()
            return {}
        raise ApiError(404, "ENDPOINT_NOT_FOUND", f"No API found for 'dbfs/{action}'.")

    def _check_writable(self, path: str, local: Path, overwrite: bool) -> None:
        if local.is_dir():
            raise ApiError(400, "RESOURCE_ALREADY_EXISTS", f"A directory already exists at path {path}.")
        if local.exists() and not overwrite:
            raise ApiError(
                400, "RESOURCE_ALREADY_EXISTS", f"A file or directory already exists at the input path {path}."
            )


def _api_path(path: str) -> str:
    return path[len("dbfs:"):] if path.startswith("dbfs:") else path


def _atomic_write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".tmp-{target.name}-{secrets.token_hex(4)}")
    temporary.write_bytes(data)
    os.replace(temporary, target)


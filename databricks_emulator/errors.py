"""Databricks' REST error shape: an HTTP status plus ``{"error_code": ..., "message": ...}``; and a
request whose connection is closed without any answer."""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, error_code: str, message: str):
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message


class DropConnection(Exception):
    """Close the request's connection without sending an answer (the client sees a connection
    reset / "remote end closed connection without response")."""


def bad(message: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER_VALUE", message)

"""Tracking URIs as they may be shown: never with a password in them."""

from __future__ import annotations

import urllib.parse


def mask_uri(uri: str) -> str:
    """The URI with any password replaced by ``***``, for logs, params and messages."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def without_credentials(uri: str) -> str:
    """The URI with no user or password, for a plain reachability probe."""
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

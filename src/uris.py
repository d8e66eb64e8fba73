"""Tracking URIs as they may be shown: never with a password in them."""

from __future__ import annotations

import logging
import re


def without_credentials(uri: str) -> str:
    """The URI with no user or password, for an address to print."""
    return _USER_INFO.sub(r"\1", uri)


def mask_text(text: str) -> str:
    """Any text with the passwords of the URIs in it masked (also in the form Hydra gives a
    sweep's jobs their overrides, with ``:`` escaped as ``\\:``)."""
    return _CREDENTIALS.sub(r"\1***@", text)


def mask_overrides(overrides: list[str]) -> list[str]:
    """Command-line overrides as they may be recorded: URIs in them masked."""
    return [mask_text(override) for override in overrides]


# user:password@ after a scheme, also as Hydra prints overrides (with ":" escaped as "\:"). As in
# urllib.parse, the user info runs to the last "@" before the path, query or fragment, so the
# user (an e-mail address) and the password may hold an "@"; the user may be empty.
_CREDENTIALS = re.compile(r'(://[^\s:/?#"]*\\?:)[^\s/?#"\[\]]*@')
_USER_INFO = re.compile(r'(://)[^\s/?#"\[\]]*@')


class MaskingFilter(logging.Filter):
    """A logging filter that masks passwords in URIs (Hydra logs every job's overrides)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "://" in message:
            record.msg, record.args = mask_text(message), ()
        return True

"""URLs read from the environment that may hold a secret, checked in words that never quote the secret.

``BACKFILL_ALERT_WEBHOOK_URL`` is a secret as a whole (read through ``dg.EnvVar``; a malformed one is
refused without echoing it). ``BACKFILL_SPARK_REMOTE`` becomes the Spark resource's config, which
Dagster keeps in the code location's snapshot (``configured_values``) and start errors quoted, so it
may hold no secret at all: a Spark Connect ``token`` parameter is refused.
"""

from __future__ import annotations

import re
import urllib.parse

SPARK_REMOTE_EXAMPLE = "sc://127.0.0.1:15002"


def webhook_url_problem(url: str) -> str | None:
    """What is wrong with a webhook URL, in words that never quote it (it is a secret); None if
    it is usable."""
    if url != url.strip() or any(char.isspace() or ord(char) < 32 for char in url):
        return "it contains spaces or control characters (remove them; encode a space in a path as %20)"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number 0-65535
    except ValueError:
        return "it is not a URL (bad port or brackets)"
    if parts.scheme.lower() not in ("http", "https"):
        return "it does not start with https:// (or http://)"
    if not parts.hostname:
        return "it has no host name"
    return None


def spark_remote_problem(remote: str) -> str | None:
    """What is wrong with a Spark Connect URL (``sc://host[:port][/;param=value;...]``); never quotes
    a URL that names a token. None if it is usable."""
    if re.search(r"token\s*=", remote, re.IGNORECASE):
        return (
            "it carries a token (the value is not shown). The platform keeps no secret in this variable: "
            "it is resource config, kept in Dagster's code location snapshot and quoted in errors. Use a Spark "
            "Connect server without token authentication on a trusted host (backfill-platform spark-server "
            "binds 127.0.0.1)"
        )
    base = remote.partition("/;")[0]
    try:
        parsed = urllib.parse.urlsplit(base)
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number 0-65535
    except ValueError:
        parsed = None
    if parsed is None or parsed.scheme != "sc" or not parsed.hostname or parsed.path.strip("/"):
        return f"{remote!r} is not a Spark Connect URL like {SPARK_REMOTE_EXAMPLE}"
    return None

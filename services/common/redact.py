"""What a client-facing message must not carry: internal addresses. gRPC's transport errors name the
peer ("ipv4:10.0.3.7:9000"), Redis's name its URL; the full text goes to the service's log instead."""

from __future__ import annotations

import re

_ADDRESS = re.compile(
    r"(?:ipv[46]|unix|dns):[^\s,;'\"]+"  # gRPC peers and targets
    r"|[a-z][a-z0-9+.-]*://[^\s,;'\"]+"  # URLs: redis://user:pass@host:port/0
    r"|\[[0-9a-fA-F:]+\](?::\d+)?"  # [::1]:9000
    r"|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"  # 10.0.3.7:9000
    r"|\blocalhost:\d+\b", re.IGNORECASE)


def redact(message: str) -> str:
    """`message` with addresses, URLs and host:port pairs replaced by "<internal>"."""
    return _ADDRESS.sub("<internal>", message)

"""What several commands share: the user-error type and ``--param name=value`` parsing (no heavy imports)."""

from __future__ import annotations

import json
from typing import Sequence


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


def parse_params(pairs: Sequence[str]) -> dict:
    params = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"--param {pair!r} must look like name=value, e.g. --param C=1.0")
        key, raw = pair.split("=", 1)
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params

"""Request body parsing for every resource: strict JSON."""

import json
from collections.abc import Mapping
from typing import Any

from rest_framework import exceptions
from rest_framework.parsers import JSONParser


class DuplicateMemberError(ValueError):
    pass


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise DuplicateMemberError
        result[name] = value
    return result


def _reject_constant(_: str) -> None:
    raise ValueError("NaN and Infinity are not JSON")


class StrictJSONParser(JSONParser):
    """JSON only, UTF-8 only; duplicate members, NaN/Infinity and runaway nesting are 400s.

    The error message is fixed: it never quotes the body, which may hold a key.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        try:
            text = stream.read().decode("utf-8") if stream is not None else ""
            return json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
        except DuplicateMemberError as exc:
            raise exceptions.ParseError("JSON object has a duplicate member.") from exc
        except (ValueError, RecursionError) as exc:
            raise exceptions.ParseError("Malformed JSON.") from exc

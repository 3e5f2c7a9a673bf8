"""The version a repository asks to be served, read from its text alone (standard library only:
the serving image has no protobuf), on a file system or on S3 (`s3.py`).

A repository asks for one version N: the highest version that both `preprocess` and
`classifier` serve under their config's `version_policy` (latest K by default, all, or
specific versions) and that both hold. While a change is half written (an export copying a
version, a pin between its two configs) the two may have no version in common: that is
`RepositoryChangingError`, and a follower waits for the next look.

`pin_config_text` rewrites a config's version policy as `specific { versions: N }` in the text
itself, comments and strings kept (the serving view and the pin of an `s3://` repository).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from plantdx.exceptions import RepositoryError

from .names import CAMS_CLASSIFIER, CLASSIFIER, PREPROCESS

PAIRED = (PREPROCESS, CLASSIFIER)  # published together as version N
# Published beside the pair as version N when an export has them (the class-activation maps of
# --target triton): pinned and switched with the pair, but the pair alone decides what is
# asked for, and a version without one still serves (without explanations).
FOLLOWERS = (CAMS_CLASSIFIER,)


def versioned_models(present: Iterable[str]) -> tuple[str, ...]:
    """The models pinned and switched as version N, of the model names `present`."""
    have = set(present)
    return PAIRED + tuple(m for m in FOLLOWERS if m in have)


CONFIG = "config.pbtxt"
_FIELD = re.compile(r"\bversion_policy\s*:?\s*\{")
_FIELDS: dict[str, re.Pattern[str]] = {"version_policy": _FIELD}


class RepositoryChangingError(RepositoryError):
    """preprocess and classifier serve no version in common now (a change is half written)."""


def top_level_spans(text: str, name: str = "version_policy") -> list[tuple[int, int]]:
    """Spans of every top-level `version_policy { ... }` field, or of the message field `name`
    (comments and strings aware)."""
    if name not in _FIELDS:
        _FIELDS[name] = re.compile(rf"\b{re.escape(name)}\s*:?\s*\{{")
    field_re = _FIELDS[name]
    spans, depth, i, start = [], 0, 0, -1
    while i < len(text):
        ch = text[i]
        if ch == "#":  # a comment runs to the end of the line
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        if ch in "\"'":
            end = i + 1
            while end < len(text) and text[end] != ch:
                end += 2 if text[end] == "\\" else 1
            i = end + 1
            continue
        if depth == 0 and start < 0:
            m = field_re.match(text, i)
            if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
                start, i, depth = i, m.end(), 1
                continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0 and start >= 0:
                spans.append((start, i + 1))
                start = -1
            if depth < 0:
                raise RepositoryError("config.pbtxt has an unbalanced '}'")
        i += 1
    if depth != 0:
        raise RepositoryError("config.pbtxt has an unbalanced '{'")
    return spans


def pin_config_text(text: str, version: int | list[int]) -> str:
    """config.pbtxt text with its version policy replaced by `specific { versions: N }` (one
    line per version when given several)."""
    for start, end in reversed(top_level_spans(text)):
        text = text[:start] + text[end:]
    wanted = [version] if isinstance(version, int) else sorted(set(version))
    lines = "".join(f"    versions: {int(v)}\n" for v in wanted)
    return text.rstrip() + f"\nversion_policy {{\n  specific {{\n{lines}  }}\n}}\n"


def _strip_comments(text: str) -> str:
    return re.sub(r"#[^\n]*", "", text)


def policy_versions(config_text: str, available: list[int]) -> list[int]:
    """The versions Triton serves under the config's version policy, of those `available`."""
    available = sorted(available)
    spans = top_level_spans(config_text)
    if not spans:
        return available[-1:]  # Triton's default: the latest one
    start, end = spans[-1]
    body = _strip_comments(config_text[start:end])
    body = body[body.index("{") + 1 : body.rindex("}")].strip()
    if re.match(r"all\b", body):
        return available
    if re.match(r"specific\b", body):
        wanted = {int(v) for v in re.findall(r"\d+", body)}
        return [v for v in available if v in wanted]
    if re.match(r"latest\b", body):
        found = re.search(r"num_versions\s*:\s*(\d+)", body)
        n = int(found.group(1)) if found else 1
        return available[-max(n, 1) :] if available else []
    raise RepositoryError(f"unknown version_policy {body[:60]!r}")


@dataclass(frozen=True)
class Asked:
    """What a repository asks to be served: `version`, per paired model the versions its
    policy serves, and the versions it holds."""

    version: int
    served: dict[str, list[int]]
    available: dict[str, list[int]] | None = None


def asked_from(configs: dict[str, str], available: dict[str, list[int]], where: str) -> Asked:
    served = {name: policy_versions(configs[name], available[name]) for name in PAIRED}
    common = set(served[PREPROCESS]) & set(served[CLASSIFIER])
    if not common:
        raise RepositoryChangingError(
            f"{where}: preprocess serves {served[PREPROCESS] or 'nothing'} and classifier "
            f"{served[CLASSIFIER] or 'nothing'}: no version in common (a change being written?)"
        )
    return Asked(max(common), served, {name: sorted(available[name]) for name in PAIRED})

"""The crop of each class, and the crop a farmer names: which classes an answer may choose from.

A class's crop is read from its name, the part before `___` (`Tomato___Late_blight` →
`Tomato`, `Pepper,_bell___healthy` → `Pepper,_bell`); a class name without `___` is its own
crop. A training run may override any class's crop with `crops.yaml` (class → crop) in its
directory. The mapping travels with the model like its decision rule: in the checkpoint
(`Checkpoint.crops`), beside every exported version (`preprocess/N/crops.json`), and in the
served postprocess; a version exported without `crops.json` has its crops read from the labels.

**How a requested crop name is matched** (`CropMap.resolve`). The text is split into words on
anything that is not a letter or a digit, case ignored; a word also matches its crop word with
a plural `s` or `es` (`tomatoes`). Then:

1. a crop whose words are exactly the request's words, in any order: `tomato`, `TOMATO`,
   `Pepper,_bell`, `pepper bell`, `bell pepper`;
2. otherwise the one crop that has all the request's words among its own: `pepper` or `bell`
   → `Pepper,_bell`, `corn` → `Corn_(maize)`; when two or more crops have them, the name is
   ambiguous and refused, naming them;
3. otherwise the name is unknown and refused, naming the crops the model knows.

Empty text, text with no letter or digit, text that is not UTF-8, or text longer than
`MAX_CROP_BYTES` is refused too. A refusal is a `CropError` (a ValueError) with a message for
the person who sent it; the refused text is quoted shortened, never in full.

numpy only (and the standard library): the Triton Python backends import it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plantdx.exceptions import ConfigError

CROPS_FILENAME = "crops.json"  # beside decision.json in preprocess/N/
CROPS_OVERRIDE_FILENAME = "crops.yaml"  # in a training run's directory: class → crop
SEPARATOR = "___"
MAX_CROP_BYTES = 64
_WORD = re.compile(r"[0-9a-z]+")


class CropError(ValueError):
    """A crop name this model cannot use: empty, too long, unknown or ambiguous."""


def crop_of(class_name: str) -> str:
    """The crop part of a class name: before `___`, or the whole name when there is none."""
    crop, sep, _ = class_name.partition(SEPARATOR)
    return crop if sep and crop.strip() else class_name


def words(text: str) -> tuple[str, ...]:
    """The lower-case words of a name: letters and digits, everything else separates."""
    return tuple(_WORD.findall(text.lower()))


def _word_matches(asked: str, word: str) -> bool:
    return asked in (word, word + "s", word + "es")


def _covers(asked: Sequence[str], crop_words: Sequence[str]) -> bool:
    """Every asked word is one of the crop's words (plurals allowed)."""
    return all(any(_word_matches(a, w) for w in crop_words) for a in asked)


def _same(asked: Sequence[str], crop_words: Sequence[str]) -> bool:
    """The same words, in any order (plurals allowed)."""
    return (
        len(set(asked)) == len(set(crop_words))
        and _covers(asked, crop_words)
        and all(any(_word_matches(a, w) for a in asked) for w in crop_words)
    )


def shorten(text: str, limit: int = 40) -> str:
    """A refused value as it may be quoted back: its repr, cut to about `limit` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


@dataclass(frozen=True)
class CropMap:
    """The crop of each class, in the classifier's output order."""

    classes: tuple[str, ...]
    crops: tuple[str, ...]
    _masks: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    _resolved: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.classes) != len(self.crops):
            raise ValueError(f"{len(self.crops)} crops for {len(self.classes)} classes")
        empty = [c for c, crop in zip(self.classes, self.crops, strict=True) if not words(crop)]
        if empty:
            raise ValueError(f"the crop of {empty[0]!r} has no letter or digit")

    @classmethod
    def derive(
        cls, class_names: Sequence[str], overrides: Mapping[str, str] | None = None
    ) -> CropMap:
        """Crops read from the class names; `overrides` (class → crop) replaces any of them.
        An override naming a class the model does not have is refused (a typo, most likely)."""
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(class_names))
        if unknown:
            raise ValueError(f"crops are given for classes the model does not have: {unknown}")
        crops = tuple(str(overrides.get(c, crop_of(c))) for c in class_names)
        return cls(tuple(class_names), crops)

    @classmethod
    def from_dict(cls, class_names: Sequence[str], d: Mapping[str, Any] | None) -> CropMap:
        """The stored mapping (class → crop), completed from the class names where it is
        silent: an empty or absent mapping is the one the class names give."""
        return cls.derive(class_names, {str(k): str(v) for k, v in (d or {}).items()})

    def to_dict(self) -> dict[str, str]:
        return dict(zip(self.classes, self.crops, strict=True))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, class_names: Sequence[str]) -> CropMap:
        """The mapping in `path`; the one the class names give when the file is absent (a
        version exported before crops were)."""
        p = Path(path)
        if not p.is_file():
            return cls.derive(class_names)
        return cls.from_dict(class_names, json.loads(p.read_text()))

    @property
    def names(self) -> list[str]:
        """The distinct crops, in the order their first class comes."""
        return list(dict.fromkeys(self.crops))

    def resolve(self, text: str | bytes) -> str:
        """The crop a requested name means (the module's docstring has the rule), or CropError."""
        if isinstance(text, bytes | bytearray | memoryview):
            raw = bytes(text)
            self._check_length(len(raw))
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CropError("the crop name is not UTF-8 text") from None
        else:
            self._check_length(len(text.encode()))
        found = self._resolved.get(text)
        if found is not None:
            return found
        asked = words(text)
        if not asked:
            what = "empty" if not text.strip() else f"{shorten(text)}, with no letter or digit"
            raise CropError(f"the crop name is {what}: name one of {self._known()}, or send none")
        crop = self._match(text, asked)
        if len(self._resolved) < 1024:  # a bounded memo of the (short) names seen
            self._resolved[text] = crop
        return crop

    def _check_length(self, n: int) -> None:
        if n > MAX_CROP_BYTES:
            raise CropError(
                f"the crop name is {n} bytes long; a crop name is at most {MAX_CROP_BYTES} "
                f"(known crops: {self._known()})"
            )

    def _match(self, text: str, asked: tuple[str, ...]) -> str:
        names = self.names
        exact = [c for c in names if _same(asked, words(c))]
        candidates = exact or [c for c in names if _covers(asked, words(c))]
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise CropError(
                f"the crop name {shorten(text)} is ambiguous: it could be "
                + ", ".join(candidates)
                + "; give more of the name"
            )
        raise CropError(f"unknown crop {shorten(text)}; this model knows {self._known()}")

    def _known(self) -> str:
        return ", ".join(self.names)

    def mask(self, crop: str) -> np.ndarray:
        """Bool [C]: the classes of `crop` (a name `resolve` returned)."""
        m = self._masks.get(crop)
        if m is None:
            m = self._masks[crop] = np.array([c == crop for c in self.crops], dtype=bool)
        return m

    def class_masks(self) -> np.ndarray:
        """Bool [C, C]: row i holds the classes of class i's crop (the crop known from a
        photo's label)."""
        return np.stack([self.mask(crop) for crop in self.crops])

    def masks(self, texts: Sequence[str | bytes] | np.ndarray) -> np.ndarray:
        """Bool [N, C]: the classes each requested name allows (CropError on the first bad one)."""
        return np.stack([self.mask(self.resolve(t)) for t in texts]).reshape(len(texts), -1)


def read_crops_override(run_dir: str | Path) -> dict[str, str]:
    """`crops.yaml` in a training run's directory (class → crop); {} when there is none."""
    path = Path(run_dir) / CROPS_OVERRIDE_FILENAME
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in data.items()
    ):
        raise ConfigError(f"{path} must map class names to crop names (class: crop per line)")
    return {k: v.strip() for k, v in data.items()}


def run_crops(run_dir: str | Path, class_names: Sequence[str]) -> dict[str, str]:
    """The crop of each class a training run stores in its checkpoints: from the class names,
    with the run's `crops.yaml` overriding."""
    try:
        return CropMap.derive(class_names, read_crops_override(run_dir)).to_dict()
    except ValueError as exc:
        raise ConfigError(f"{Path(run_dir) / CROPS_OVERRIDE_FILENAME}: {exc}") from exc


class VersionCrops:
    """The crops of each served version, for the postprocess: `preprocess/<version>/crops.json`,
    read at the version's first request with a crop; from the labels for a version exported
    without one, or whose number is not known ("unknown")."""

    MAX_VERSIONS = 64  # versions kept; more are read again when asked (never unbounded)

    def __init__(self, preprocess_dir: Path, class_names: Sequence[str]) -> None:
        self.preprocess_dir = preprocess_dir
        self.class_names = list(class_names)
        self._maps: dict[str, CropMap] = {}

    def get(self, version: str) -> CropMap:
        found = self._maps.get(version)
        if found is None:
            path = self.preprocess_dir / version / CROPS_FILENAME
            found = (
                CropMap.load(path, self.class_names)
                if version.isdigit()
                else CropMap.derive(self.class_names)
            )
            if len(self._maps) < self.MAX_VERSIONS:
                self._maps[version] = found
        return found

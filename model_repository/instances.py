"""How many instances of each composing model a server runs, from the cores it may use.

**The rule** (`plan_for`), for C usable cores (plantdx.cores: affinity, cgroup quota or
PLANTDX_CORES):

| model | instances | why |
|---|---|---|
| preprocess | min(C, 8) | decoding and resizing is about two thirds of an image's CPU and a Python stub runs one batch at a time on about one core: one per core keeps every core busy when the preprocess is the bottleneck; past 8, each stub's ~100 MB buys little and more pods scale better |
| classifier | min(C, 4) | each with C // instances onnxruntime threads (the backend divides the cores): on 2 cores two single-thread instances served ~12 % more than one two-thread one (BENCHMARKS.md); past 4, wider instances batch better than more narrow ones |
| postprocess | 1, 2 from 8 cores | a softmax and counters per batch: one keeps up until the others are many |

So 1 core: 1/1/1, 2 cores: 2/2/1 (what was measured best here), 4 cores: 4/4/1, 16 cores:
8/4 (4 threads each)/2.

**Where it applies.** A repository is written at export time and may be served on another
machine (a pod with a CPU limit, a bigger node). An export writes the counts for the exporting
machine (`ServingOptions.cores`, default its own) and marks each CPU model's config as sized by
the rule (parameter `instances: "auto"`); a server re-sizes every marked config to its own
cores in the view it serves (serving/view.py, serving/local_view.py: `plantdx serve`, the
container supervisor), `adapt_config_text`. Counts given at export (`serving.preprocess.
instances`) are written without the mark and served as written, as are GPU instance groups and
repositories made before the mark. Standard library only (the serving image has no protobuf).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .names import CAMS_CLASSIFIER, CLASSIFIER, HEATMAP_MODEL, POSTPROCESS, PREPROCESS
from .policy import top_level_spans

INSTANCES_PARAMETER = "instances"  # config parameter; its value AUTO marks a sized config
AUTO = "auto"
MAX_PREPROCESS = 8
MAX_CLASSIFIER = 4
POSTPROCESS_SECOND_FROM = 8  # cores from which the postprocess gets a second instance
GPU_INSTANCES = 2  # a GPU classifier's instances when none are given (not sized by cores)


@dataclass(frozen=True)
class InstancePlan:
    cores: int
    preprocess: int
    classifier: int
    postprocess: int

    @property
    def classifier_threads(self) -> int:
        """onnxruntime intra-op threads per classifier instance (as the backend divides)."""
        return max(1, self.cores // self.classifier)

    def count(self, model: str) -> int | None:
        """This plan's instances of `model`, or None for a model the rule does not size."""
        return {
            PREPROCESS: self.preprocess,
            CLASSIFIER: self.classifier,
            CAMS_CLASSIFIER: self.classifier,
            POSTPROCESS: self.postprocess,
            HEATMAP_MODEL: self.postprocess,
        }.get(model)

    def describe(self) -> str:
        return (
            f"{self.cores} cores: preprocess {self.preprocess}, classifier {self.classifier} "
            f"({self.classifier_threads} onnxruntime threads each), postprocess {self.postprocess}"
        )


def plan_for(cores: int) -> InstancePlan:
    """The rule of the module's docstring for `cores` usable cores."""
    c = max(1, int(cores))
    return InstancePlan(
        cores=c,
        preprocess=min(c, MAX_PREPROCESS),
        classifier=min(c, MAX_CLASSIFIER),
        postprocess=1 if c < POSTPROCESS_SECOND_FROM else 2,
    )


_AUTO_MARK = re.compile(
    r'key\s*:\s*"' + INSTANCES_PARAMETER + r'"\s*value\s*\{\s*string_value\s*:\s*"' + AUTO + '"'
)
_COUNT = re.compile(r"(\bcount\s*:\s*)(\d+)")
_NAME = re.compile(r'^name\s*:\s*"([^"]+)"', re.MULTILINE)


def is_auto(text: str) -> bool:
    """Whether a config.pbtxt's instances are sized by the rule (the `instances: auto` mark)."""
    return bool(_AUTO_MARK.search(text))


def config_name(text: str) -> str | None:
    found = _NAME.search(text)
    return found.group(1) if found else None


def adapt_config_text(text: str, cores: int, model: str | None = None) -> str:
    """config.pbtxt text with the count of each CPU instance group replaced by the rule's for
    `cores`, when the config is marked; any other config comes back unchanged. `model`: the
    model's name (default: the config's own `name`)."""
    if not is_auto(text):
        return text
    count = plan_for(cores).count(model or config_name(text) or "")
    if count is None:
        return text
    for start, end in reversed(top_level_spans(text, "instance_group")):
        group = text[start:end]
        if "KIND_GPU" in group or not _COUNT.search(group):
            continue
        group = _COUNT.sub(lambda m: f"{m.group(1)}{count}", group, count=1)
        text = text[:start] + group + text[end:]
    return text


def counts(text: str) -> list[int]:
    """The instance counts of a config.pbtxt's top-level groups, in order."""
    out = []
    for start, end in top_level_spans(text, "instance_group"):
        found = _COUNT.search(text[start:end])
        out.append(int(found.group(2)) if found else 1)
    return out

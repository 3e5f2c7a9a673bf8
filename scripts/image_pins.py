#!/usr/bin/env python3
"""Every container image plantdx pulls or deploys is pinned by digest: the base images of
docker/*.Dockerfile (their FROM, or the ARG default it uses), the images docker/compose.yaml
pulls (services it builds itself are exempt: their bases are the Dockerfiles'), and the
images of every kustomization under k8s/ (`images:` entries with `digest:`).

A digest of all zeros (PLACEHOLDER) means "not resolved yet": the repository was written where
no registry could be reached. `check` rejects it, as it rejects a tag without a digest, so a
build or deployment cannot go out with an unset pin. `pin` resolves each placeholder (or each
reference, with --all) on a machine that can reach the registries, and writes the digest in
place:

    python3 scripts/image_pins.py check            # exit 1 and one line per problem
    python3 scripts/image_pins.py check --scope build    # the Dockerfiles' bases (CI, before a build)
    python3 scripts/image_pins.py check --scope deploy   # compose and k8s (before up / apply)
    python3 scripts/image_pins.py pin              # needs docker buildx (or crane) and a login
    python3 scripts/image_pins.py pin --resolver crane

Our own images (plantdx-serving, -export, -training) are pinned to the digest their push
printed (`docker buildx imagetools inspect REGISTRY/plantdx-serving:TAG`), which `pin` also
looks up once they are pushed. Standard library only (and PyYAML-free), so CI can run it first.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER = "sha256:" + "0" * 64
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass
class Ref:
    """One image reference in one file: `name[:tag]@digest` (digest may be missing)."""

    path: Path
    line: int
    image: str  # name[:tag], without the digest
    digest: str | None

    def where(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.line}"


def _split(ref: str) -> tuple[str, str | None]:
    image, _, digest = ref.partition("@")
    return image, digest or None


def dockerfile_refs(path: Path) -> Iterator[Ref]:
    """FROM images, through the ARG defaults they use; stage names are skipped."""
    text = path.read_text()
    args = {m.group(1): (m.group(2), text[: m.start()].count("\n") + 1)
            for m in re.finditer(r"^ARG\s+(\w+)=(\S+)", text, re.M)}  # fmt: skip
    stages: set[str] = set()
    for m in re.finditer(r"^FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I):
        ref, alias = m.group(1), m.group(2)
        line = text[: m.start()].count("\n") + 1
        if ref not in stages:
            var = re.fullmatch(r"\$\{?(\w+)\}?", ref)
            if var and var.group(1) in args:
                ref, line = args[var.group(1)]
            yield Ref(path, line, *_split(ref))
        if alias:
            stages.add(alias)


def compose_refs(path: Path) -> Iterator[Ref]:
    """`image:` of the services that do not build their image here."""
    lines = path.read_text().splitlines()
    service_start = [i for i, ln in enumerate(lines) if re.match(r"^  [\w-]+:\s*$", ln)]
    for n, start in enumerate(service_start):
        end = service_start[n + 1] if n + 1 < len(service_start) else len(lines)
        block = lines[start:end]
        if any(re.match(r"^    build:", ln) for ln in block):
            continue
        for i, ln in enumerate(block):
            m = re.match(r"^    image:\s*(\S+)\s*$", ln)
            if m:
                yield Ref(path, start + i + 1, *_split(m.group(1)))


def kustomization_refs(path: Path) -> Iterator[Ref]:
    """Each `images:` entry: newName (or name) with newTag, and its digest."""
    lines = path.read_text().splitlines()
    entry: dict[str, str] = {}
    first = 0
    in_images = False

    def done() -> Iterator[Ref]:
        if entry:
            name = entry.get("newName", entry.get("name", "?"))
            tag = f":{entry['newTag']}" if "newTag" in entry else ""
            yield Ref(path, first, name + tag, entry.get("digest"))

    for i, ln in enumerate(lines, 1):
        if re.match(r"^images:\s*$", ln):
            in_images = True
            continue
        if in_images and re.match(r"^\S", ln):
            yield from done()
            entry, in_images = {}, False
            continue
        m = re.match(r"^\s*(-\s+)?(name|newName|newTag|digest):\s*(\S+)", ln) if in_images else None
        if m:
            if m.group(1):
                yield from done()
                entry, first = {}, i
            entry[m.group(2)] = m.group(3).strip("\"'")
    yield from done()


def all_refs(root: Path = ROOT, scope: str = "all") -> list[Ref]:
    """`build`: the Dockerfiles' bases; `deploy`: what compose and the kustomizations run."""
    refs: list[Ref] = []
    if scope in ("all", "build"):
        refs += [
            r for f in sorted((root / "docker").glob("*.Dockerfile")) for r in dockerfile_refs(f)
        ]
    if scope in ("all", "deploy"):
        refs += list(compose_refs(root / "docker" / "compose.yaml"))
        for f in sorted((root / "k8s").rglob("kustomization.yaml")):
            refs += list(kustomization_refs(f))
    return refs


def problems(refs: list[Ref]) -> list[str]:
    out = []
    for r in refs:
        if r.digest is None:
            out.append(f"{r.where()}: {r.image} has no digest (pin it: image@sha256:...)")
        elif r.digest == PLACEHOLDER:
            out.append(f"{r.where()}: {r.image} still has the placeholder digest (run `pin`)")
        elif not DIGEST.fullmatch(r.digest):
            out.append(f"{r.where()}: {r.image}@{r.digest} is not a sha256 digest")
        if r.image.endswith(":latest") or ":" not in r.image.rsplit("/", 1)[-1]:
            out.append(f"{r.where()}: {r.image} needs a fixed tag beside its digest")
    return out


def resolve_with(resolver: str) -> Callable[[str], str]:
    """image:tag → its digest (the multi-platform index when there is one)."""

    def buildx(image: str) -> str:
        out = subprocess.run(
            ["docker", "buildx", "imagetools", "inspect", image, "--format", "{{json .Manifest}}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return _digest_in(out, image)

    def crane(image: str) -> str:
        out = subprocess.run(["crane", "digest", image], capture_output=True, text=True, check=True)
        return _digest_in(out.stdout, image)

    return {"buildx": buildx, "crane": crane}[resolver]


def _digest_in(text: str, image: str) -> str:
    m = DIGEST.search(text)
    if not m:
        raise SystemExit(f"no digest for {image} in: {text[:200]}")
    return m.group(0)


def pin(refs: list[Ref], resolve: Callable[[str], str], every: bool = False) -> list[str]:
    """Write the resolved digest of each placeholder (every reference with `every`)."""
    done = []
    for r in refs:
        if r.digest not in (None, PLACEHOLDER) and not every:
            continue
        digest = resolve(r.image)
        lines = r.path.read_text().splitlines(keepends=True)
        i = r.line - 1
        if r.path.name == "kustomization.yaml":
            i = _digest_line(lines, i)
            indent = re.match(r"^(\s*)", lines[i].replace("- ", "  ", 1)).group(1)  # type: ignore[union-attr]
            new = f"{indent}digest: {digest}\n"
            if "digest:" in lines[i]:
                lines[i] = new
            else:
                lines.insert(i + 1, new)
        else:
            old = f"{r.image}@{r.digest}" if r.digest else r.image
            if old not in lines[i]:
                raise SystemExit(f"{r.where()}: {old} not found on that line")
            lines[i] = lines[i].replace(old, f"{r.image}@{digest}")
        r.path.write_text("".join(lines))
        done.append(f"{r.where()}: {r.image}@{digest}")
    return done


def _digest_line(lines: list[str], first: int) -> int:
    """The entry's `digest:` line, else its last line."""
    i = first
    while i + 1 < len(lines) and re.match(r"^\s+(name|newName|newTag|digest):", lines[i + 1]):
        i += 1
        if "digest:" in lines[i]:
            return i
    return i


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="exit 1 when any image is not pinned by a real digest")
    p = sub.add_parser("pin", help="resolve placeholder digests and write them in place")
    p.add_argument("--resolver", choices=["buildx", "crane"], default="buildx")
    p.add_argument("--all", action="store_true", help="re-resolve every reference")
    for cmd in (c, p):
        cmd.add_argument(
            "--scope",
            choices=["all", "build", "deploy"],
            default="all",
            help="build: the Dockerfiles' base images (before a build); deploy: the images "
            "compose and the kustomizations run (before `up` / `kubectl apply`)",
        )
    args = parser.parse_args(argv)
    refs = all_refs(scope=args.scope)
    if args.command == "pin":
        if shutil.which("docker" if args.resolver == "buildx" else "crane") is None:
            print(f"{args.resolver}: not installed", file=sys.stderr)
            return 2
        for line in pin(refs, resolve_with(args.resolver), every=args.all):
            print(line)
        refs = all_refs(scope=args.scope)
    found = problems(refs)
    for line in found:
        print(line, file=sys.stderr)
    print(f"{len(refs)} image references, {len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

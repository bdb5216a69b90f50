"""Translate an Apptainer/Singularity definition file (pytorch.def) into a Dockerfile that builds
the image `apptainer build` would build, so that a machine with podman/docker but no apptainer
can build and run the recipe (tools/container/container_check.sh).

Nothing of the recipe is rewritten: the texts of %files, %post, %environment, %runscript and %test
go into the image byte for byte (base64 in the Dockerfile, so no quoting can alter them) and run
as apptainer runs them:
  - %files: each line ``SRC [DEST]`` is copied from the build context (the repository) as
    apptainer's CopyFromHost does: SRC is globbed, DEST defaults to SRC, a missing DEST ending in
    ``/`` is created as a folder (else its parent is), then ``cp -fLr SRC DEST`` (DEST under
    ICAM_ROOTFS, empty in the image, as apptainer joins it to the root file system it builds);
  - %post: ``/bin/sh -e -x`` on the section text (apptainer's default interpreter);
  - %environment -> /.singularity.d/env/90-environment.sh, %runscript -> /.singularity.d/runscript
    and %test -> /.singularity.d/test, each behind ``#!/bin/sh``, as in a SIF; the image's entry
    point is apptainer's run action: source /.singularity.d/env/*.sh, then
    ``exec /.singularity.d/runscript "$@"``;
  - %test runs at the end of the build, as `apptainer build` runs it;
  - %labels -> LABEL; the header's ``From:`` -> ``ARG BASE_IMAGE`` (the default), so a build can
    swap the base image; ``ARG TORCH_INDEX`` (unset by default) is visible to %post, whose pip
    line falls back to the CUDA index when it is unset.
spython (PyPI) is not used: it splits %post into one RUN per line (``set -eu`` and ``export``
are lost), ADDs ``lib /opt/icam/`` as the folder's contents, and echoes the runscript through a
shell that expands ``$1`` and ``$#`` at build time.

    python -m tools.container.def_to_dockerfile pytorch.def -o Dockerfile.def
"""
from __future__ import annotations

import argparse
import base64
import re
import sys
from pathlib import Path

from lib.errors import UserError, run_main

SECTIONS = {"help", "setup", "files", "labels", "environment", "post", "runscript", "startscript",
            "test", "arguments", "app", "appinstall", "apphelp", "apprun", "appenv", "applabels",
            "appfiles", "apptest", "appstart"}
# Sections a Dockerfile build cannot reproduce faithfully: refused rather than silently dropped.
UNSUPPORTED = {"setup", "startscript", "arguments"} | {s for s in SECTIONS if s.startswith("app")}

# Apptainer's CopyFromHost (internal/pkg/build/files), for one %files line "SRC [DEST]".
FILES_HELPER = r'''icam_files() {
  for src in $1; do
    dst=${2:-$src}
    case $dst in /*) ;; *) dst=/$dst ;; esac
    dst=${ICAM_ROOTFS:-}$dst
    if [ ! -e "$dst" ]; then
      case $dst in */) mkdir -p "$dst" ;; *) mkdir -p "$(dirname "$dst")" ;; esac
    fi
    cp -fLr "$src" "$dst"
  done
}
'''
# Apptainer's /.singularity.d/actions/run, reduced to what a SIF built from this recipe uses.
RUN_ACTION = '''#!/bin/sh
for f in /.singularity.d/env/*.sh; do [ -f "$f" ] && . "$f"; done
exec /.singularity.d/runscript "$@"
'''


def parse_def(text: str, path: str = "pytorch.def") -> dict[str, str]:
    """Split a definition file into {"header": ..., "<section>": body}; a body is the lines after
    its ``%name`` line up to the next section, verbatim (trailing blank lines dropped)."""
    sections: dict[str, list[str]] = {"header": []}
    name = "header"
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^%(\w+)(.*)$", line)
        if m and m.group(1) in SECTIONS:
            name = m.group(1)
            if name in UNSUPPORTED:
                raise UserError(f"{path}:{n}: %{name} has no Dockerfile equivalent here")
            if m.group(2).strip():
                raise UserError(f"{path}:{n}: section options ('{m.group(2).strip()}') are not supported")
            if name in sections:
                raise UserError(f"{path}:{n}: %{name} appears twice")
            sections[name] = []
        else:
            sections[name].append(line)
    return {k: "\n".join(v).rstrip("\n") + ("\n" if "".join(v).strip() else "")
            for k, v in sections.items()}


def header_field(header: str, key: str) -> str | None:
    m = re.search(rf"^\s*{key}:\s*(\S+)", header, re.M | re.I)
    return m.group(1) if m else None


def files_lines(body: str) -> list[list[str]]:
    """The %files entries as [SRC] or [SRC, DEST]; comments and blank lines skipped."""
    out = []
    for line in body.splitlines():
        tok = line.split()
        if tok and not tok[0].startswith("#"):
            out.append(tok[:2])
    return out


def _write(path: str, text: str, mode: str = "644") -> str:
    """A RUN fragment that writes ``text`` to ``path`` exactly (base64: no quoting involved)."""
    b64 = base64.b64encode(text.encode()).decode()
    return f"echo {b64} | base64 -d > {path} && chmod {mode} {path}"


def to_dockerfile(text: str, path: str = "pytorch.def") -> str:
    sec = parse_def(text, path)
    if (header_field(sec["header"], "Bootstrap") or "").lower() != "docker":
        raise UserError(f"{path}: only 'Bootstrap: docker' is supported")
    base = header_field(sec["header"], "From")
    if not base:
        raise UserError(f"{path}: the header has no 'From:'")
    out = [f"# Generated from {Path(path).name} by tools/container/def_to_dockerfile.py; do not edit.",
           f"ARG BASE_IMAGE={base}", "FROM ${BASE_IMAGE}"]
    for line in sec.get("labels", "").splitlines():
        tok = line.split(None, 1)
        if tok and not tok[0].startswith("#"):
            out.append(f"LABEL {tok[0]}={_quote(tok[1] if len(tok) > 1 else '')}")
    if sec.get("files", "").strip():
        script = FILES_HELPER + "".join(
            "icam_files " + " ".join(_shq(t) for t in tok) + "\n" for tok in files_lines(sec["files"]))
        out += ["# %files, from the build context (the repository root, minus .dockerignore)",
                "COPY . /.icam-context",
                "RUN " + _write("/.icam-files.sh", script)
                + " && cd /.icam-context && /bin/sh -e /.icam-files.sh && cd / && rm -rf /.icam-context /.icam-files.sh"]
    if "post" in sec:
        out += ["# %post, as apptainer runs it; TORCH_INDEX (unset by default) is visible to it",
                "ARG TORCH_INDEX",
                "RUN " + _write("/.post.script", sec["post"], "755")
                + " && /bin/sh -e -x /.post.script && rm /.post.script"]
    out.append("RUN mkdir -p /.singularity.d/env /.singularity.d/actions")
    for name, dest, mode in (("environment", "/.singularity.d/env/90-environment.sh", "755"),
                             ("runscript", "/.singularity.d/runscript", "755"),
                             ("test", "/.singularity.d/test", "755")):
        if name in sec:
            out.append(f"# %{name} (after %post, as apptainer writes it)")
            out.append("RUN " + _write(dest, "#!/bin/sh\n\n" + sec[name], mode))
    out.append("RUN " + _write("/.singularity.d/actions/run", RUN_ACTION, "755"))
    if "test" in sec:  # apptainer build ends by running %test in the image's environment
        out.append("RUN /bin/sh -c 'for f in /.singularity.d/env/*.sh; do . \"$f\"; done; "
                   "exec /bin/sh -e /.singularity.d/test'")
    out.append('ENTRYPOINT ["/bin/sh", "/.singularity.d/actions/run"]')
    return "\n".join(out) + "\n"


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _shq(tok: str) -> str:
    """Single-quote a %files token: globs expand inside icam_files (per line, as apptainer's
    CopyFromHost does), not at the call, where ``*.sh DEST`` would turn into several arguments."""
    if re.fullmatch(r"[A-Za-z0-9_./*?\[\]-]+", tok):
        return f"'{tok}'"
    raise UserError(f"%files entry '{tok}': characters other than [A-Za-z0-9_./*?[]-] are not supported")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="def_to_dockerfile", description=__doc__.split("\n\n")[0])
    ap.add_argument("deffile", help="the Apptainer definition file (e.g. pytorch.def)")
    ap.add_argument("-o", "--out", help="output Dockerfile (default: stdout)")
    args = ap.parse_args(argv)
    try:
        text = Path(args.deffile).read_text()
    except OSError as e:
        raise UserError(f"{args.deffile}: cannot read ({e.strerror or e})") from e
    dockerfile = to_dockerfile(text, args.deffile)
    if args.out:
        from lib.io import atomic_path  # numpy/PIL: not needed for stdout (a bare python3 works)
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(dockerfile)
    else:
        sys.stdout.write(dockerfile)
    return 0


if __name__ == "__main__":
    run_main(main, "def_to_dockerfile")

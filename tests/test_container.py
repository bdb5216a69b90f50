"""tools/container/def_to_dockerfile.py: pytorch.def's sections reach the generated Dockerfile unchanged, and
%files copies as apptainer does. (tools/container/container_check.sh builds and runs both images; no
container engine is needed here.)"""
import base64
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from lib.errors import UserError
from tools.container.def_to_dockerfile import FILES_HELPER, RUN_ACTION, files_lines, parse_def, to_dockerfile

ROOT = Path(__file__).resolve().parents[1]
DEF = (ROOT / "pytorch.def").read_text()


def written_files(dockerfile: str) -> dict[str, str]:
    """{path: text} of every `echo B64 | base64 -d > PATH` in the generated Dockerfile."""
    return {m.group(2): base64.b64decode(m.group(1)).decode()
            for m in re.finditer(r"echo ([A-Za-z0-9+/=]+) \| base64 -d > (\S+)", dockerfile)}


def test_sections_reach_the_image_verbatim():
    dock = to_dockerfile(DEF)
    files = written_files(dock)
    # the section bodies, cut out by hand: the lines between the section line and the next one
    lines = DEF.splitlines()

    def body(name):
        i = lines.index(f"%{name}") + 1
        j = next(k for k in range(i, len(lines)) if lines[k].startswith("%"))
        return "\n".join(lines[i:j]).rstrip("\n") + "\n"

    assert files["/.post.script"] == body("post")
    assert files["/.singularity.d/env/90-environment.sh"] == "#!/bin/sh\n\n" + body("environment")
    assert files["/.singularity.d/runscript"] == "#!/bin/sh\n\n" + body("runscript")
    assert files["/.singularity.d/test"] == "#!/bin/sh\n\n" + body("test")
    assert files["/.singularity.d/actions/run"] == RUN_ACTION
    assert "pip install --no-cache-dir -r /opt/icam/requirements.txt" in files["/.post.script"]
    # %files: one helper call per line, tokens as written
    calls = [shlex.split(ln)[1:] for ln in files["/.icam-files.sh"].splitlines() if ln.startswith("icam_files ")]
    assert calls == files_lines(body("files")) and ["*.sh", "/opt/icam/"] in calls
    # base image: the def's From: as the default of a build argument; %post runs with sh -e -x
    assert re.search(r"^ARG BASE_IMAGE=nvidia/cuda:12\.8\.1-cudnn-runtime-ubuntu24\.04$", dock, re.M)
    assert "/bin/sh -e -x /.post.script" in dock and "ARG TORCH_INDEX" in dock
    # order as in apptainer: %files, then %post, then the runtime files
    assert dock.index("/.icam-files.sh") < dock.index("/.post.script") < dock.index("90-environment.sh")
    # %test runs at the end of the build (as `apptainer build` does), in the image's environment
    assert dock.index("90-environment.sh") < dock.index("exec /bin/sh -e /.singularity.d/test")
    entry = json.loads(dock.splitlines()[-1][len("ENTRYPOINT"):])
    assert entry == ["/bin/sh", "/.singularity.d/actions/run"]


def test_files_copy_like_apptainer(tmp_path):
    """SRC globbed; a missing DEST ending in / becomes a folder that SRC goes into; a missing DEST
    without / is created by cp (a folder copied onto a new name); DEST omitted = SRC's path."""
    ctx, rootfs = tmp_path / "ctx", tmp_path / "rootfs"
    (ctx / "lib" / "sub").mkdir(parents=True)
    (ctx / "lib" / "sub" / "a.py").write_text("a")
    for name in ("x.sh", "y.sh", "requirements.txt"):
        (ctx / name).write_text(name)
    rootfs.mkdir()
    recipe = ("Bootstrap: docker\nFrom: base\n%files\n    requirements.txt /opt/icam/\n"
              "    # a comment\n    *.sh /opt/icam/\n    lib /opt/icam/\n    lib /opt/other\n    x.sh\n")
    script = written_files(to_dockerfile(recipe))["/.icam-files.sh"]
    r = subprocess.run(["sh", "-e", "-c", script], cwd=ctx, env={"ICAM_ROOTFS": str(rootfs), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*") if p.is_file())
    assert got == ["opt/icam/lib/sub/a.py", "opt/icam/requirements.txt", "opt/icam/x.sh", "opt/icam/y.sh",
                   "opt/other/sub/a.py", "x.sh"]
    bad = subprocess.run(["sh", "-e", "-c", FILES_HELPER + "icam_files 'nothing*' /opt/icam/\n"], cwd=ctx,
                         env={"ICAM_ROOTFS": str(rootfs), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert bad.returncode != 0 and "nothing*" in bad.stderr


def test_refuses_what_it_cannot_translate():
    with pytest.raises(UserError, match=r"x\.def:3: %setup has no Dockerfile equivalent"):
        to_dockerfile("Bootstrap: docker\nFrom: a\n%setup\n  true\n", "x.def")
    with pytest.raises(UserError, match=r"x\.def:3: section options \('-c /bin/bash'\)"):
        parse_def("Bootstrap: docker\nFrom: a\n%post -c /bin/bash\n  true\n", "x.def")
    with pytest.raises(UserError, match="only 'Bootstrap: docker'"):
        to_dockerfile("Bootstrap: library\nFrom: a\n%post\n  true\n", "x.def")
    assert "ARG BASE_IMAGE=a\nFROM ${BASE_IMAGE}\n" in to_dockerfile("Bootstrap: docker\nFrom: a\n")

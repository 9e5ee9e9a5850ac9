"""What a user's install costs: a fresh virtual environment with ``pip install .`` (the lean base, pictures through
openvino-genai) beside one with ``pip install ".[optimum]"`` (optimum-intel's image runtime), each measured for
install time, size on disk, its largest packages, the app's import time, demo start to ``/ready`` 200 and the server's
RSS after its first picture.

The package is installed from a copy of the working tree (the files git tracks or would track), not from the repository
folder itself: setuptools builds in ``build/``, and a stale ``build/lib`` there would put modules that no longer exist
into the wheel. The optimum venv gets ``torch==2.13.0`` first so that, where a CPU wheel of it is at hand, the figures
are not those of a CUDA build nothing here runs. pip may still replace it: optimum-intel asks for an unpinned
``torchvision``, the newest of which needs a newer torch, so where the only newer torch is a CUDA build the venv gets
that (the table says which torch it ended with). ``--hold-torch`` keeps the first torch with a constraint; pip then
picks the torchvision made for it, which must be a CPU build too (e.g. from PyTorch's CPU index, through
``--pip-arg=--extra-index-url=https://download.pytorch.org/whl/cpu``): PyPI's Linux torchvision is built against CUDA
torch and fails to register its operators on a CPU one, and transformers then cannot import ``AutoProcessor``.

Writes ``<out>.json`` and ``<out>.md``.

    python scripts/bench_install.py --out bench-results/install
    python scripts/bench_install.py --venv-dir /tmp/venvs             # keep the venvs it builds
    python scripts/bench_install.py --lean-venv /tmp/venvs/lean --optimum-venv /tmp/venvs/optimum  # no install
    python scripts/bench_install.py --skip-optimum
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from scripts.bench_common import PeakRSS, machine, machine_line, table, timestamp, write_outputs  # noqa: E402
from tests.e2e.conftest import LiveServer, free_port  # noqa: E402

HEAVY = ("torch", "diffusers", "transformers", "optimum", "nncf")
GOAL_MB = 1024  # the goal for the lean install on Linux: <= 1.0 GB
MB = 2**20  # as ``du -m`` counts
TORCH_PIN = "torch==2.13.0"  # a CPU wheel on this kind of machine; an unpinned torch is a 5 GB CUDA build

# Run in the venv: the app's import time, which heavy libraries that import loaded and which the venv could import.
IMPORT_PROBE = """
import importlib.util, json, sys, time
t = time.perf_counter()
from aipc_chat.api.app import create_app
seconds = time.perf_counter() - t
import aipc_chat
heavy = {heavy!r}
print(json.dumps({{"seconds": seconds, "imported": [m for m in heavy if m in sys.modules],
                  "importable": [m for m in heavy if importlib.util.find_spec(m) is not None],
                  "package": aipc_chat.__file__}}))
"""

# Run in the venv: its site-packages folders and some packages' versions.
VENV_PROBE = """
import importlib.metadata as md, json, sysconfig
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
paths = sysconfig.get_paths()
print(json.dumps({"site": sorted({paths["purelib"], paths["platlib"]}), "pip": version("pip"),
                  "torch": version("torch"), "torchvision": version("torchvision"),
                  "aipc_chat": version("aipc-chat")}))
"""


# Run in the venv: the installed versions of {names}.
VERSIONS_PROBE = """
import importlib.metadata as md, json
print(json.dumps({{name: md.version(name) for name in {names!r}}}))
"""


@dataclass(frozen=True)
class Variant:
    """One way to install the package and the image runtime it serves with."""

    key: str
    title: str
    extra: str  # "" or "[optimum]"
    runtime: str  # AIPC_IMAGE_RUNTIME
    first: tuple[str, ...] = ()  # installed before the package


LEAN = Variant("lean", "pip install . (openvino-genai)", "", "genai")
OPTIMUM = Variant("optimum", 'pip install ".[optimum]" (optimum-intel)', "[optimum]", "optimum", (TORCH_PIN,))


def say(message: str) -> None:
    print(f"[bench_install] {message}", file=sys.stderr, flush=True)  # noqa: T201 - progress of a long run


def bin_dir(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin")


def venv_python(venv: Path) -> Path:
    return bin_dir(venv) / ("python.exe" if os.name == "nt" else "python")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would steer the venv elsewhere (our settings, PYTHONPATH, the
    activated venv), plus ``extra``."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIPC_") and k not in drop}
    return {**env, **extra}


def run(cmd: list[str], log: Path, *, cwd: Path, timeout: float = 3600) -> float:
    """Run ``cmd`` with its output appended to ``log``; seconds taken; raises with the log's tail on failure."""
    t0 = time.perf_counter()
    with log.open("ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        code = subprocess.run(cmd, cwd=cwd, env=clean_env(), stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                              check=False).returncode
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} exited with {code}:\n{tail}")
    return time.perf_counter() - t0


def source_copy(dest: Path) -> Path:
    """The working tree as git sees it (tracked and untracked-but-not-ignored files) copied to ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = REPO / name
        if src.is_file():  # a file deleted in the working tree is still listed as tracked
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return dest


def git_state() -> dict[str, Any]:
    """The commit and whether the working tree differs from it: the install is of the working tree."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def install(variant: Variant, venv: Path, source: Path, python: str, log: Path, pip_args: list[str], *,
            hold: bool) -> dict[str, Any]:
    """A fresh venv with pip upgraded (as ``make install`` does; not timed), then the timed installs; ``hold``: what
    was installed first stays at its version (a constraints file) while the package installs."""
    say(f"{variant.key}: creating {venv}")
    run([python, "-m", "venv", str(venv)], log, cwd=source)
    py = str(venv_python(venv))
    run([py, "-m", "pip", "install", "--upgrade", "pip", *pip_args], log, cwd=source)
    out: dict[str, Any] = {}
    if variant.first:
        say(f"{variant.key}: pip install {' '.join(variant.first)}")
        out["first_install_s"] = run([py, "-m", "pip", "install", *variant.first, *pip_args], log, cwd=source)
        if hold:
            versions = probe(Path(py), VERSIONS_PROBE.format(names=[r.split("=")[0] for r in variant.first]), source)
            pins = log.with_suffix(".pins.txt")
            pins.write_text("".join(f"{name}=={v}\n" for name, v in versions.items()), encoding="utf-8")
            out["held"] = [f"{name}=={v}" for name, v in versions.items()]
            pip_args = [*pip_args, "-c", str(pins)]
    say(f"{variant.key}: pip install {source}{variant.extra}")
    out["package_install_s"] = run([py, "-m", "pip", "install", f"{source}{variant.extra}", *pip_args], log,
                                   cwd=source)
    out["install_s"] = out.get("first_install_s", 0.0) + out["package_install_s"]
    return out


def disk_usage(path: Path) -> int:
    """Bytes on disk under ``path`` as ``du`` counts them: allocated blocks, each hard-linked file once, no symlinks
    followed."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [path]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
    return total


def dist_name(dist_info: Path) -> str:
    """The distribution's name from its METADATA, else from the folder's name."""
    try:
        for line in (dist_info / "METADATA").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Name:"):
                return line.split(":", 1)[1].strip()
            if not line:
                break
    except OSError:
        pass
    return dist_info.name.split("-")[0]


def largest_packages(sites: list[str], top: int = 10) -> list[dict[str, Any]]:
    """The ``top`` installed distributions by the bytes of the files their RECORD lists (scripts and data outside
    site-packages included), each file counted once."""
    seen: set[tuple[int, int]] = set()
    sizes: dict[str, int] = {}
    for site in map(Path, sites):
        for dist_info in site.glob("*.dist-info"):
            record = dist_info / "RECORD"
            if not record.is_file():
                continue
            total = 0
            with record.open(encoding="utf-8", errors="replace", newline="") as f:
                for row in csv.reader(f):
                    if not row:
                        continue
                    try:
                        st = (site / row[0]).stat()
                    except OSError:
                        continue
                    if (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        total += st.st_size
            name = dist_name(dist_info)
            sizes[name] = sizes.get(name, 0) + total
    ranked = sorted(sizes.items(), key=lambda kv: -kv[1])[:top]
    return [{"name": name, "mb": round(size / MB, 1)} for name, size in ranked]


def probe(py: Path, code: str, cwd: Path) -> dict[str, Any]:
    """Run ``code`` in the venv (from ``cwd``, so the repository's folder is not on its path) and parse its JSON."""
    proc = subprocess.run([str(py), "-c", code], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                          timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{py} -c ... exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def import_times(py: Path, runs: int, cwd: Path) -> dict[str, Any]:
    """The app's import time, best of ``runs`` fresh processes, and which heavy libraries it loaded."""
    results = [probe(py, IMPORT_PROBE.format(heavy=HEAVY), cwd) for _ in range(runs)]
    seconds = [r["seconds"] for r in results]
    return {"best_s": min(seconds), "runs_s": seconds, "imported": results[0]["imported"],
            "importable": results[0]["importable"], "package": results[0]["package"]}


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of a process and its children (on Windows a console script is a launcher with a python child)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a child that just ended
            total += p.memory_info().rss
    return total


def start(venv: Path, work: Path, runtime: str, ready_timeout: float) -> tuple[LiveServer, float]:
    """``aipc-chat serve --demo`` from the venv with fresh data and models folders; seconds to ``/ready`` 200."""
    port = free_port()
    env = clean_env(AIPC_DATA_DIR=str(work / "data"), AIPC_MODELS_DIR=str(work / "models"),
                    AIPC_IMAGE_RUNTIME=runtime, AIPC_LOG_LEVEL="info")
    log_path = work / "server.log"
    cmd = [str(bin_dir(venv) / "aipc-chat"), "serve", "--demo", "--port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    server = LiveServer(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()[-4000:]}")
        try:
            r = httpx.get(f"{server.base_url}/ready", timeout=5)
        except httpx.TransportError:
            time.sleep(0.25)
            continue
        if r.status_code == 200:
            return server, time.perf_counter() - t0
        failed = {kind: m.get("error") for kind, m in r.json().get("models", {}).items() if m.get("state") == "failed"}
        if failed:  # the server keeps serving what loaded; /ready would stay 503
            server.stop()
            raise RuntimeError(f"a model failed to load: {failed}")
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"server not ready in {ready_timeout} s:\n{server.log()[-4000:]}")


def first_picture(server: LiveServer, picture: dict[str, Any]) -> tuple[float, int]:
    """Seconds for the server's first picture, and its peak RSS meanwhile; raises on anything but a PNG."""
    body = {"prompt": "a red fox", "response_format": "b64_json", **picture}
    with PeakRSS(server.proc.pid, interval=0.05) as peak:
        t0 = time.perf_counter()
        r = httpx.post(f"{server.base_url}/v1/images/generations", json=body, timeout=900)
        seconds = time.perf_counter() - t0
    if r.status_code != 200:
        errors = [line for line in server.log().splitlines() if "Error" in line or "ERROR" in line]
        raise RuntimeError(f"the first picture answered {r.status_code}: {r.text[:500]}\nserver log:\n"
                           + "\n".join(errors[-6:]))
    if not base64.b64decode(r.json()["data"][0]["b64_json"]).startswith(b"\x89PNG"):
        raise RuntimeError("the first picture is not a PNG")
    return seconds, peak.peak


def serve_demo(venv: Path, work: Path, runtime: str, picture: dict[str, Any], ready_timeout: float,
               out: dict[str, Any]) -> None:
    """Start to ``/ready`` 200, RSS there, the first picture and RSS after it, into ``out``."""
    server, out["ready_s"] = start(venv, work, runtime, ready_timeout)
    try:
        proc = psutil.Process(server.proc.pid)
        models = httpx.get(f"{server.base_url}/ready", timeout=30).json()["models"]
        out.update(llm_load_s=models["llm"]["load_seconds"], image_load_s=models["image"]["load_seconds"],
                   rss_ready_mb=tree_rss(proc) / MB)
        out["picture_s"], peak = first_picture(server, picture)
        out.update(rss_after_picture_mb=tree_rss(proc) / MB, peak_rss_picture_mb=peak / MB)
    finally:
        server.stop()
        # Which runtime loaded the pictures' model, from the server's line "... loaded on CPU by genai in ...".
        out["image_runtime_log"] = next((line.split(" by ", 1)[1].split()[0] for line in server.log().splitlines()
                                         if "image model" in line and " loaded on " in line and " by " in line), None)


def measure(variant: Variant, venv: Path | None, work: Path, args: argparse.Namespace, source: Path | None,
            out: dict[str, Any]) -> None:
    """Everything for one variant into ``out`` (what was measured stays there if a later step fails); ``venv``
    given: reuse it (no install), else build one."""
    out.update(runtime=variant.runtime, reused=venv is not None)
    if venv is None:
        assert source is not None
        venv = Path(args.venv_dir or work) / variant.key
        if venv.exists():
            shutil.rmtree(venv)
        out.update(install(variant, venv, source, args.python, work / f"pip-{variant.key}.log", args.pip_arg,
                           hold=args.hold_torch))
    venv = venv.resolve()
    py = venv_python(venv)
    out["venv"] = str(venv)
    facts = probe(py, VENV_PROBE, work)
    out.update(pip=facts["pip"], torch=facts["torch"], torchvision=facts["torchvision"], aipc_chat=facts["aipc_chat"])
    say(f"{variant.key}: size of {venv}")
    out["size_mb"] = disk_usage(venv) / MB
    out["largest"] = largest_packages(facts["site"])
    say(f"{variant.key}: import time")
    out["import"] = import_times(py, args.import_runs, work)
    say(f"{variant.key}: demo start with AIPC_IMAGE_RUNTIME={variant.runtime}")
    serve_work = work / f"serve-{variant.key}"
    serve_work.mkdir()
    picture = {"size": args.size, **({"num_inference_steps": args.steps} if args.steps else {})}
    out["serve"] = {}
    serve_demo(venv, serve_work, variant.runtime, picture, args.ready_timeout, out["serve"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "bench-results" / "install"))
    parser.add_argument("--lean-venv", help="measure this venv as the lean install (no pip install)")
    parser.add_argument("--optimum-venv", help="measure this venv as the optimum install (no pip install)")
    parser.add_argument("--skip-optimum", action="store_true", help="measure the lean install only")
    parser.add_argument("--venv-dir", help="build the venvs here and keep them (default: a temporary folder)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter the venvs are made from")
    parser.add_argument("--pip-arg", action="append", default=[],
                        help="an extra argument for every pip install, e.g. --pip-arg=--no-cache-dir")
    parser.add_argument("--hold-torch", action="store_true",
                        help=f"keep the {TORCH_PIN} installed first with a constraint (see above)")
    parser.add_argument("--import-runs", type=int, default=3, help="the app's import time is the best of these")
    parser.add_argument("--size", default="256x256", help="the first picture's size (the demo model: 64..512 step 64)")
    parser.add_argument("--steps", type=int, default=0, help="the first picture's steps (default: the server's)")
    parser.add_argument("--ready-timeout", type=float, default=900)
    args = parser.parse_args()
    variants = [(LEAN, args.lean_venv)] + ([] if args.skip_optimum else [(OPTIMUM, args.optimum_venv)])
    result: dict[str, Any] = {"when": timestamp(), "machine": machine(), "source": git_state(), "goal_mb": GOAL_MB,
                              "picture": {"size": args.size, "steps": args.steps or "server default"},
                              "pip_args": args.pip_arg, "hold_torch": args.hold_torch, "variants": {}}
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-install-") as tmp:
        work = Path(tmp)
        source = None
        if any(venv is None for _, venv in variants):
            source = source_copy(work / "aipc-chat")
        for variant, venv in variants:
            vwork = work / variant.key
            vwork.mkdir()
            entry = result["variants"][variant.key] = {"title": variant.title}
            try:
                measure(variant, Path(venv) if venv else None, vwork, args, source, entry)
            except Exception as exc:  # what was measured still stands; the run fails at the end
                say(f"{variant.key} failed: {exc}")
                entry["error"] = str(exc)[-4000:]
                failed = True
    report = markdown(result)
    write_outputs(result, Path(args.out).with_suffix(""), report)
    print(report)  # noqa: T201
    return 1 if failed else 0


def fmt_mb(mb: float | None) -> str:
    return "-" if mb is None else f"{mb:,.0f}"


def variant_rows(variants: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """One row per figure, one column per variant."""
    def get(v: dict[str, Any], *keys: str) -> Any:
        for key in keys:
            if not isinstance(v, dict) or key not in v:
                return None
            v = v[key]
        return v

    def secs(x: Any) -> str:
        return "-" if x is None else f"{x:.2f}"

    def names(x: Any) -> str:
        return "-" if x is None else (", ".join(x) or "none")

    specs = [
        ("pip install (s)", lambda v: "reused" if v.get("reused") else secs(get(v, "install_s"))),
        (f"of which {TORCH_PIN} first (s)", lambda v: secs(get(v, "first_install_s"))),
        ("installed size (MB)", lambda v: fmt_mb(get(v, "size_mb"))),
        ("torch installed", lambda v: "-" if "pip" not in v else (v["torch"] or "no")),
        ("torchvision installed", lambda v: "-" if "pip" not in v else (v["torchvision"] or "no")),
        ("import of the app (s, best)", lambda v: secs(get(v, "import", "best_s"))),
        ("heavy libraries the import loads", lambda v: names(get(v, "import", "imported"))),
        ("heavy libraries importable", lambda v: names(get(v, "import", "importable"))),
        ("demo start to /ready 200 (s)", lambda v: secs(get(v, "serve", "ready_s"))),
        ("RSS at /ready (MB)", lambda v: fmt_mb(get(v, "serve", "rss_ready_mb"))),
        ("first picture (s)", lambda v: secs(get(v, "serve", "picture_s"))),
        ("RSS after the first picture (MB)", lambda v: fmt_mb(get(v, "serve", "rss_after_picture_mb"))),
        ("peak RSS during it (MB)", lambda v: fmt_mb(get(v, "serve", "peak_rss_picture_mb"))),
    ]
    return [[name, *(f(v) for v in variants.values())] for name, f in specs]


def markdown(r: dict[str, Any]) -> str:
    """The run as Markdown."""
    variants: dict[str, dict[str, Any]] = r["variants"]
    src = r["source"]
    lines = [f"# Install benchmark ({r['when']})", "",
             f"{machine_line(r['machine'])}; Python {r['machine']['python']}; package from commit {src['commit']}"
             f"{' with local changes' if src['dirty'] else ''}; demo models; first picture {r['picture']['size']}, "
             f"steps: {r['picture']['steps']}; heavy libraries: {', '.join(HEAVY)}.", "",
             table(["", *(v["title"] for v in variants.values())], variant_rows(variants)), ""]
    lean = variants.get("lean", {})
    if "size_mb" in lean:
        verdict = "met" if lean["size_mb"] <= r["goal_mb"] else "NOT met"
        lines += [f"Lean install: {fmt_mb(lean['size_mb'])} MB on disk (goal <= {r['goal_mb']} MB: {verdict}).", ""]
    for v in variants.values():
        if v.get("held"):
            lines += [f"{v['title']}: {', '.join(v['held'])} installed first and held there by a constraint.", ""]
        if "error" in v:
            lines += [f"**{v['title']} failed:**", "", "```", v["error"][-1500:], "```", ""]
        if v.get("largest"):
            lines += [f"Largest packages, {v['title']}:", "",
                      table(["package", "MB"], [[p["name"], fmt_mb(p["mb"])] for p in v["largest"]]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

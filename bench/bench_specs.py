"""Benchmark the git reader on a large generated repository.

Builds, in a temporary directory, a bare git repository of N models shaped
like ``specs/iris/model.yaml`` (each with its own ``train.py`` and
``requirements.txt``), the example policy and two environments, written in
one ``git fast-import`` stream. Commit A has them all; commit B (main) changes
one model's ``train.py``; commit C (branch ``tune``, from A) changes one
model's spec. Then it measures, with :class:`controller.backends.git.Repository`:

* the cold load and validation of every spec at A: each run is a fresh Python
  process (no parse cache, no warmed-up resolver or schema, no heap left over
  from an earlier load) that imports the package untimed and then times
  ``Repository.open(path).catalog(A)`` — walk the spec trees, read the blobs,
  parse, schema-check, cross-check, and the one garbage collection the load
  ends with. Each run also reports the load average it started at (the
  machine may be shared); the first run times the steps one by one;
* ``git diff-tree -r --name-only A B`` as a subprocess, for reference, and the
  same diff through pygit2;
* the catalog of a second commit once A's is loaded (B: code-only change;
  C: one spec changed, so one re-parse and a cross-check);
* ``changed_models(A, B)`` with both catalogs loaded, as the median of
  several repetitions, and its ratio to the cold load.

``--variants`` instead compares cold loads with parts of the reader switched
off, for this benchmark only (see :data:`VARIANTS`): the fast YAML reader and
the compiled schema check replaced by the full loader and jsonschema alone.
The variants' runs are interleaved, so a shared machine's load weighs on each
alike; each run's wall-clock and CPU seconds and the load it started at are
printed, with each variant's medians and their ratio to the first.

Run: ``python bench/bench_specs.py [--models N] [--repeat R] [--keep] [--variants A,B,...]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import controller.specs.parse as parse
import controller.specs.schema as schema
from controller.backends.git import Repository
from controller.specs import check_catalog, parse_document

ROOT = Path(__file__).resolve().parents[1]
COMMITTER = b"Bench <bench@example.com> 1700000000 +0000"

T = TypeVar("T")

COLD_TARGET_S = 3.0
CHANGED_TARGET_S = 0.050
CHANGED_RATIO_TARGET = 0.02

# Which of the fast YAML reader and the compiled schema check each variant keeps.
VARIANTS: dict[str, dict[str, bool]] = {
    "as-is": {"fastyaml": True, "fastschema": True},
    "no-fastyaml": {"fastyaml": False, "fastschema": True},
    "no-fastschema": {"fastyaml": True, "fastschema": False},
    "no-fast": {"fastyaml": False, "fastschema": False},
}


def model_name(i: int) -> str:
    return f"model-{i:05d}"


def model_spec(template: str, i: int, *, c: float = 1.0) -> bytes:
    name = model_name(i)
    text = template.replace("name: iris", f"name: {name}", 1).replace("C: 1.0", f"C: {c}", 1)
    return text.encode()


def _data(payload: bytes) -> bytes:
    return b"data %d\n%s\n" % (len(payload), payload)


def _file(path: str, payload: bytes) -> bytes:
    return b"M 100644 inline %s\n%s" % (path.encode(), _data(payload))


def generate(dest: Path, models: int) -> tuple[str, str, str, int, int]:
    """Write the repository; return (A, B, C, the model changed by B, the model changed by C)."""
    template = (ROOT / "specs/iris/model.yaml").read_text()
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(dest)], check=True)
    code_model, spec_model = models // 2, models // 3
    chunks: list[bytes] = [
        b"commit refs/heads/main\nmark :1\ncommitter %s\n" % COMMITTER,
        _data(b"A: %d models" % models),
        _file("README.md", b"# generated models\n"),
        _file("policies/default.yaml", (ROOT / "policies/default.yaml").read_bytes()),
        _file("environments/staging.yaml", (ROOT / "environments/staging.yaml").read_bytes()),
        _file("environments/production.yaml", (ROOT / "environments/production.yaml").read_bytes()),
    ]
    for i in range(models):
        base = f"specs/{model_name(i)}"
        chunks.append(_file(f"{base}/model.yaml", model_spec(template, i)))
        chunks.append(_file(f"{base}/train.py", b"# %s\nprint('training')\n" % model_name(i).encode()))
        chunks.append(_file(f"{base}/requirements.txt", b"scikit-learn>=1.4\n# %d\n" % i))
    chunks += [
        b"commit refs/heads/main\nmark :2\ncommitter %s\n" % COMMITTER,
        _data(b"B: change one model's code"),
        b"from :1\n",
        _file(f"specs/{model_name(code_model)}/train.py", b"print('training, better')\n"),
        b"commit refs/heads/tune\nmark :3\ncommitter %s\n" % COMMITTER,
        _data(b"C: change one model's spec"),
        b"from :1\n",
        _file(f"specs/{model_name(spec_model)}/model.yaml", model_spec(template, spec_model, c=2.5)),
        b"done\n",
    ]
    subprocess.run(["git", "fast-import", "--quiet", "--done"], cwd=dest, input=b"".join(chunks), check=True)

    def rev(ref: str) -> str:
        out = subprocess.run(["git", "rev-parse", ref], cwd=dest, check=True, capture_output=True, text=True)
        return out.stdout.strip()

    return rev("main~1"), rev("main"), rev("tune"), code_model, spec_model


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median_time(fn: Callable[[], object], repeat: int) -> float:
    return statistics.median(timed(fn)[0] for _ in range(repeat))


def breakdown(repo: Repository, commit: str) -> dict[str, float]:
    """Time the steps of a cold load one by one, as ``Repository.catalog`` runs them."""
    gc.disable()  # the catalog pauses the collector the same way for a large load
    walk_s, blobs = timed(lambda: repo.spec_blobs(commit))
    read_s, files = timed(lambda: {p: repo.read_blob(o) for p, o in blobs.items()})
    parse_s, parsed = timed(lambda: [parse_document(p, d) for p, d in sorted(files.items())])
    check_s, _ = timed(lambda: check_catalog(parsed))
    gc.enable()
    collect_s, _ = timed(gc.collect)
    return {"walk": walk_s, "read": read_s, "parse": parse_s, "check": check_s, "collect": collect_s}


def switch_off(variant: str) -> None:
    """Apply a variant of :data:`VARIANTS` to this process (a cold child), before anything is parsed."""
    switches = VARIANTS[variant]
    if not switches["fastyaml"]:
        parse._load_plain = lambda text: None  # every file goes to the full loader
    if not switches["fastschema"]:
        schema._fast = lambda kind: lambda document: False  # jsonschema decides every document


def cold_child(repo_path: str, commit: str, *, with_breakdown: bool, variant: str = "as-is") -> None:
    """In a fresh process: time one cold catalog and print it (and the step times) as JSON."""
    switch_off(variant)
    load = os.getloadavg()[0]  # other work on the machine
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    catalog = Repository.open(repo_path, mirror_root=Path(repo_path).parent / "mirrors").catalog(commit)
    result: dict[str, Any] = {
        "seconds": time.perf_counter() - wall_start,
        "cpu_seconds": time.process_time() - cpu_start,
        "models": len(catalog.models),
        "errors": len(catalog.errors),
        "load": load,
    }
    if with_breakdown:
        del catalog
        gc.collect()
        result["steps"] = breakdown(
            Repository.open(repo_path, mirror_root=Path(repo_path).parent / "mirrors"), commit
        )
    print(json.dumps(result))


def run_cold(
    repo_path: Path, commit: str, *, with_breakdown: bool = False, variant: str = "as-is"
) -> dict[str, Any]:
    """One cold load in a new interpreter; the import of the package is outside the timing."""
    cmd = [sys.executable, __file__, "--cold-child", str(repo_path), commit, "--variant", variant]
    if with_breakdown:
        cmd.append("--breakdown")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    answer: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return answer


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of the slow measurements")
    parser.add_argument("--keep", action="store_true", help="keep the generated repository")
    parser.add_argument("--cold-child", nargs=2, metavar=("REPO", "COMMIT"), help=argparse.SUPPRESS)
    parser.add_argument("--breakdown", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="as-is", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument(
        "--variants",
        type=lambda text: text.split(","),
        help=f"compare cold loads only, interleaved, of these variants: {', '.join(VARIANTS)}",
    )
    args = parser.parse_args(argv)
    if args.cold_child:
        cold_child(*args.cold_child, with_breakdown=args.breakdown, variant=args.variant)
        return 0
    n, repeat = args.models, max(1, args.repeat)
    if args.variants:
        unknown = [v for v in args.variants if v not in VARIANTS]
        if unknown:
            parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
        return compare_variants(n, repeat, args.variants, keep=args.keep)

    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    try:
        path = work / "repo.git"
        gen_s, (a, b, c, code_model, spec_model) = timed(lambda: generate(path, n))
        mirrors = work / "mirrors"

        def fresh() -> Repository:
            return Repository.open(str(path), mirror_root=mirrors)

        # cold load: each run in a fresh process; the first one also times the steps
        colds = [run_cold(path, a, with_breakdown=i == 0) for i in range(repeat)]
        cold_times: list[float] = [c["seconds"] for c in colds]
        cold_cpu: list[float] = [c["cpu_seconds"] for c in colds]
        cold_s = statistics.median(cold_times)
        steps: dict[str, float] = colds[0]["steps"]

        # second commit, with A loaded: code-only change (B) and one spec changed (C)
        warm_b: list[float] = []
        warm_c: list[float] = []
        for _ in range(repeat):
            loaded = fresh()
            catalog = loaded.catalog(a)
            warm_b.append(timed(partial(loaded.catalog, b))[0])
            warm_c.append(timed(partial(loaded.catalog, c))[0])
        warm_b_s, warm_c_s = statistics.median(warm_b), statistics.median(warm_c)

        # diffs, for reference
        diff_cmd = ["git", "diff-tree", "-r", "--name-only", "-z", a, b]
        run_diff = partial(subprocess.run, diff_cmd, cwd=path, check=True, capture_output=True)
        diff_tree_s = median_time(run_diff, 15)
        repo = fresh()
        pygit2_diff_s = median_time(lambda: repo.changed_paths(a, b), 15)

        # changed models, both catalogs loaded
        repo.catalog(a)
        repo.catalog(b)
        repo.catalog(c)
        first_changed_s, changes = timed(lambda: repo.changed_models(a, b))
        changed_s = median_time(lambda: repo.changed_models(a, b), 25)
        changed_c_s, changes_c = timed(lambda: repo.changed_models(a, c))
        changed_c_s = median_time(lambda: repo.changed_models(a, c), 25)
        ratio = changed_s / cold_s
    finally:
        if args.keep:
            print(f"repository kept at {work / 'repo.git'}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    ok_models = len(catalog.models) == n and not catalog.errors
    ok_models = ok_models and all(c["models"] == n and c["errors"] == 0 for c in colds)
    runs = ", ".join(f"{t:.2f}" for t in cold_times)
    loads = ", ".join(f"{c['load']:.1f}" for c in colds)
    ok_changes = changes.modified == {model_name(code_model)} and not (changes.added or changes.removed)
    ok_changes_c = changes_c.models == {model_name(spec_model)}
    rows: list[tuple[str, str, str, str]] = [
        ("generate repository (fast-import)", fmt(gen_s), "", ""),
        ("  walk spec trees (spec_blobs)", fmt(steps["walk"]), "", ""),
        ("  read blobs", fmt(steps["read"]), "", ""),
        ("  parse + schema (parse_document)", fmt(steps["parse"]), "", ""),
        ("  cross-checks (check_catalog)", fmt(steps["check"]), "", ""),
        ("  garbage collection after the load", fmt(steps["collect"]), "", ""),
        (f"cold catalog at A, fresh process (median of {repeat})", fmt(cold_s), "< 3 s",
         _verdict(cold_s < COLD_TARGET_S)),
        (f"  each run: {runs} s at load {loads}; CPU median", fmt(statistics.median(cold_cpu)), "", ""),
        ("warm catalog at B (code-only change)", fmt(warm_b_s), "", ""),
        ("warm catalog at C (one spec changed)", fmt(warm_c_s), "", ""),
        ("git diff-tree -r --name-only A B (subprocess)", fmt(diff_tree_s), "~7 ms ref", ""),
        ("changed_paths A B (pygit2 tree diff)", fmt(pygit2_diff_s), "", ""),
        ("changed_models A B, first call", fmt(first_changed_s), "", ""),
        ("changed_models A B (median of 25)", fmt(changed_s), "< 50 ms",
         _verdict(changed_s < CHANGED_TARGET_S)),
        ("changed_models / cold catalog", f"{ratio:.3%}", "< 2%", _verdict(ratio < CHANGED_RATIO_TARGET)),
        ("changed_models A C (median of 25)", fmt(changed_c_s), "", ""),
    ]  # fmt: skip
    print(f"\nFlywheel git reader benchmark: {n:,} models, Python {sys.version.split()[0]}\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'time':>12}  {'target':>10}  result")
    print(f"{'-' * width}  {'-' * 12}  {'-' * 10}  ------")
    for name, value, target, verdict in rows:
        print(f"{name:<{width}}  {value:>12}  {target:>10}  {verdict}")
    print()
    print(f"catalog: {len(catalog.models):,} models, {len(catalog.policies)} policies, "
          f"{len(catalog.environments)} environments, {len(catalog.errors)} errors")  # fmt: skip
    print(f"changed A..B: {sorted(changes.models)}; A..C: {sorted(changes_c.models)}")
    if not (ok_models and ok_changes and ok_changes_c):
        print("WRONG RESULT: the catalog or the changed models are not what was generated")
        for error in catalog.errors[:5]:
            print(f"  {error}")
        return 1
    return 0


def compare_variants(n: int, repeat: int, variants: list[str], *, keep: bool) -> int:
    """Cold loads of each variant, interleaved ``repeat`` times; medians and ratios to the first."""
    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    try:
        path = work / "repo.git"
        a = generate(path, n)[0]
        for round_ in range(repeat):
            for variant in variants:
                run = run_cold(path, a, variant=variant)
                runs[variant].append(run)
                print(
                    f"round {round_ + 1} {variant:<14} {run['seconds']:6.2f} s wall "
                    f"{run['cpu_seconds']:6.2f} s CPU  load {run['load']:.1f}  "
                    f"{run['models']} models, {run['errors']} errors",
                    flush=True,
                )
    finally:
        if keep:
            print(f"repository kept at {path}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nCold catalog of {n:,} models by variant, medians of {repeat} interleaved runs\n")
    first = variants[0]
    base_wall = statistics.median(r["seconds"] for r in runs[first])
    base_cpu = statistics.median(r["cpu_seconds"] for r in runs[first])
    ratio = f"/ {first}"
    print(f"{'variant':<14} {'wall':>8} {ratio:>16} {'CPU':>8} {ratio:>16}  loads")
    for variant in variants:
        wall = statistics.median(r["seconds"] for r in runs[variant])
        cpu = statistics.median(r["cpu_seconds"] for r in runs[variant])
        loads = ", ".join(f"{r['load']:.1f}" for r in runs[variant])
        print(
            f"{variant:<14} {wall:7.2f}s {wall / base_wall:16.2f} {cpu:7.2f}s {cpu / base_cpu:16.2f}  {loads}"
        )
    wrong = [v for v, rs in runs.items() if any(r["models"] != n or r["errors"] for r in rs)]
    if wrong:
        print(f"WRONG RESULT in {wrong}: the catalog is not what was generated")
        return 1
    return 0


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


if __name__ == "__main__":
    sys.exit(main())

"""The git backend reads specs and code straight from git objects, and finds what a commit range changed.

Pinned down here, on throwaway repositories built with the ``git`` CLI:

* branches and their heads, the default branch, ``resolve`` and ``merge_base``;
* specs are read at any commit without a checkout: a dirty work tree and
  index stay exactly as they were;
* only ``specs/*/model.y(a)ml``, ``policies/*`` and ``environments/*`` count
  as spec files; a spec that is a symbolic link is followed inside the
  commit's tree only (one leading out of the repository, or to no file, is
  refused unread with a located error), a change to what it leads to changes
  it, and a linked model directory is not read;
* ``changed_models`` names a model when its code, requirements or spec
  changed, when it was added or removed, when a shared source directory it
  uses changed, or when a cross-document check drops it (its environment
  was removed), and names nothing for an unrelated file;
* a catalog of a second commit re-parses only the spec files that changed;
  the garbage collector paused for a large load is always restored;
* a directory's tree id is stable while its content is; ``export_tree``
  writes content, executable bits and symlinks;
* a ``file://`` URL is mirrored, and ``fetch`` sees new commits and deleted
  branches;
* a missing commit, object or path is a ``GitError``, never a raw KeyError.
"""

from __future__ import annotations

import gc
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import controller.specs
from controller.backends.git import ChangedModels, GitError, Repository
from controller.backends.git.trees import gc_paused

pytestmark = pytest.mark.integration
GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


class Work:
    """A work tree driven by the git CLI."""

    def __init__(self, path: Path, *, branch: str = "main") -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", branch)

    def git(self, *args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=self.path, env=GIT_ENV, check=True, capture_output=True, text=True
        )
        return done.stdout.strip()

    def write(self, rel: str, content: str | bytes, *, executable: bool = False) -> None:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        target.write_bytes(content)
        target.chmod(0o755 if executable else 0o644)

    def remove(self, rel: str) -> None:
        self.git("rm", "-r", "-q", rel)

    def commit(self, message: str = "change") -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")


def model_spec(name: str, *, source: dict[str, Any] | None = None, C: float = 1.0) -> str:
    doc: dict[str, Any] = {
        "apiVersion": "flywheel.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name},
        "spec": {
            "source": source or {"path": ".", "requirements": "requirements.txt"},
            "data": [{"name": "iris", "uri": "sklearn://iris"}],
            "params": {"C": C},
            "pipeline": {"steps": [{"name": "train", "run": "python train.py"}]},
            "metrics": {"primary": "accuracy", "reported": [{"name": "accuracy", "direction": "higher"}]},
            "validation": {"gates": [{"metric": "accuracy", "min": 0.5}]},
            "serving": {"runtime": "sklearn"},
            "rollout": {"stages": [{"environment": "staging"}]},
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


POLICY = """\
apiVersion: flywheel.dev/v1alpha1
kind: Policy
metadata:
  name: default
spec:
  groups:
    ml-engineers:
      members: [alice]
  commands:
    help: ["*"]
"""

ENVIRONMENT = """\
apiVersion: flywheel.dev/v1alpha1
kind: Environment
metadata:
  name: staging
spec:
  home: embedded
"""


def add_model(work: Work, name: str, *, source: dict[str, Any] | None = None) -> None:
    work.write(f"specs/{name}/model.yaml", model_spec(name, source=source))
    work.write(f"specs/{name}/train.py", f"print('training {name}')\n")
    work.write(f"specs/{name}/requirements.txt", "scikit-learn\n")


@pytest.fixture
def work(tmp_path: Path) -> Work:
    work = Work(tmp_path / "work")
    work.write("README.md", "# models\n")
    work.write("policies/default.yaml", POLICY)
    work.write("environments/staging.yaml", ENVIRONMENT)
    add_model(work, "iris")
    add_model(work, "wine")
    work.commit("initial")
    return work


def open_repo(work: Work, tmp_path: Path) -> Repository:
    return Repository.open(str(work.path), mirror_root=tmp_path / "mirrors")


# ---------------------------------------------------------------- refs


def test_branches_heads_default_branch_and_merge_base(work: Work, tmp_path: Path) -> None:
    base = work.git("rev-parse", "HEAD")
    work.git("checkout", "-q", "-b", "feature")
    work.write("specs/iris/train.py", "print('better')\n")
    feature = work.commit("feature work")
    work.git("checkout", "-q", "main")
    work.write("README.md", "# models, documented\n")
    main = work.commit("docs")

    repo = open_repo(work, tmp_path)

    assert repo.branches() == {"main": main, "feature": feature}
    assert repo.default_branch == "main"
    assert repo.resolve("feature") == feature
    assert repo.resolve("main~1") == base
    assert repo.resolve(feature) == feature
    assert repo.merge_base("main", "feature") == base


def test_default_branch_falls_back_to_master(tmp_path: Path) -> None:
    work = Work(tmp_path / "old", branch="master")
    work.write("README.md", "x\n")
    work.commit()
    assert open_repo(work, tmp_path).default_branch == "master"


def test_unrelated_histories_have_no_merge_base(work: Work, tmp_path: Path) -> None:
    work.git("checkout", "-q", "--orphan", "island")
    work.git("rm", "-r", "-q", "-f", ".")
    work.write("other.txt", "x\n")
    work.commit("island")
    assert open_repo(work, tmp_path).merge_base("main", "island") is None


def test_bare_repository_is_read_in_place(work: Work, tmp_path: Path) -> None:
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work.path), str(bare)], env=GIT_ENV, check=True)
    repo = Repository.open(str(bare), mirror_root=tmp_path / "mirrors")
    assert not repo.remote
    assert set(repo.catalog("main").models) == {"iris", "wine"}
    assert not (tmp_path / "mirrors").exists()


# ------------------------------------------------------------- reading


def test_reads_old_commit_without_touching_work_tree_or_index(work: Work, tmp_path: Path) -> None:
    old = work.git("rev-parse", "HEAD")
    work.write("specs/iris/model.yaml", model_spec("iris", C=2.0))
    work.commit("tune iris")
    # leave the work tree dirty: a staged change, an unstaged change, an untracked file
    work.write("specs/wine/train.py", "print('staged')\n")
    work.git("add", "specs/wine/train.py")
    work.write("specs/iris/model.yaml", "not: [valid yaml\n")
    work.write("scratch.txt", "untracked\n")
    status = work.git("status", "--porcelain=v1", "--untracked-files=all")
    index = (work.path / ".git" / "index").read_bytes()
    dirty_spec = (work.path / "specs/iris/model.yaml").read_bytes()

    repo = open_repo(work, tmp_path)
    files = repo.spec_files(old)
    catalog = repo.catalog(old)

    assert yaml.safe_load(files["specs/iris/model.yaml"])["spec"]["params"] == {"C": 1.0}
    assert catalog.models["iris"].params == {"C": 1.0}
    assert repo.catalog("HEAD").models["iris"].params == {"C": 2.0}
    assert work.git("status", "--porcelain=v1", "--untracked-files=all") == status
    assert (work.path / ".git" / "index").read_bytes() == index
    assert (work.path / "specs/iris/model.yaml").read_bytes() == dirty_spec


def test_spec_files_are_only_the_spec_paths(work: Work, tmp_path: Path) -> None:
    work.write("specs/iris/notes.yaml", "kind: Note\n")
    work.write("specs/iris/nested/model.yaml", model_spec("nested"))
    work.write("specs/stray.yaml", model_spec("stray"))
    work.write("other/model.yaml", model_spec("other"))
    work.write("policies/drafts/extra.yaml", POLICY)
    work.write("environments/README.md", "docs\n")
    work.commit("noise")

    files = open_repo(work, tmp_path).spec_files("HEAD")

    assert sorted(files) == [
        "environments/staging.yaml",
        "policies/default.yaml",
        "specs/iris/model.yaml",
        "specs/wine/model.yaml",
    ]


def test_read_file_and_read_blob(work: Work, tmp_path: Path) -> None:
    repo = open_repo(work, tmp_path)
    assert repo.read_file("HEAD", "specs/iris/train.py") == b"print('training iris')\n"
    assert repo.read_file("HEAD", "specs/iris/missing.py") is None
    assert repo.read_file("HEAD", "specs/iris") is None  # a directory is not a file
    blobs = repo.spec_blobs("HEAD")
    assert repo.read_blob(blobs["policies/default.yaml"]) == POLICY.encode()


# ---------------------------------------------------------- catalogs


def test_second_commit_reparses_only_the_changed_spec(
    work: Work, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = work.git("rev-parse", "HEAD")
    work.write("specs/wine/model.yaml", model_spec("wine", C=3.0))
    second = work.commit("tune wine")
    work.write("specs/wine/train.py", "print('code only')\n")
    third = work.commit("code only")
    parsed: list[str] = []
    real = controller.specs.parse_document

    def counting(path: str, data: bytes) -> Any:
        parsed.append(path)
        return real(path, data)

    monkeypatch.setattr("controller.backends.git.repository.parse_document", counting)
    repo = open_repo(work, tmp_path)

    repo.catalog(first)
    assert len(parsed) == 4
    parsed.clear()
    assert repo.catalog(second).models["wine"].params == {"C": 3.0}
    assert parsed == ["specs/wine/model.yaml"]
    parsed.clear()
    assert repo.catalog(third) is repo.catalog(second)  # same spec blobs, same catalog
    assert repo.catalog(first) is repo.catalog(first)
    assert parsed == []


def test_caches_are_bounded_and_drop_the_least_recently_used(
    work: Work, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = work.git("rev-parse", "HEAD")
    work.write("specs/wine/model.yaml", model_spec("wine", C=3.0))
    second = work.commit("tune wine")
    parsed: list[str] = []
    real = controller.specs.parse_document

    def counting(path: str, data: bytes) -> Any:
        parsed.append(path)
        return real(path, data)

    monkeypatch.setattr("controller.backends.git.repository.parse_document", counting)
    repo = Repository.open(
        str(work.path), mirror_root=tmp_path / "mirrors", parse_cache_size=4, catalog_cache_size=1
    )
    at_first = repo.catalog(first)
    assert len(parsed) == 4
    parsed.clear()
    repo.catalog(second)  # reads the three unchanged files again, then one more than the cache holds
    assert parsed == ["specs/wine/model.yaml"]
    parsed.clear()
    # one catalog held: the first is loaded anew; of the parsed files only the old wine (the one not
    # read for the second commit) was dropped
    assert repo.catalog(first) is not at_first
    assert parsed == ["specs/wine/model.yaml"]
    assert repo.catalog(first).models["wine"].params == {"C": 1.0}


def test_invalid_spec_is_reported_and_blocks_only_itself(work: Work, tmp_path: Path) -> None:
    old = work.git("rev-parse", "HEAD")
    work.write("specs/wine/model.yaml", "apiVersion: [broken\n")
    new = work.commit("break wine")
    repo = open_repo(work, tmp_path)

    catalog = repo.catalog(new)
    assert set(catalog.models) == {"iris"}
    assert catalog.errors_for("specs/wine/model.yaml")
    changes = repo.changed_models(old, new)
    assert changes.invalid == ("specs/wine/model.yaml",)
    assert changes.removed == {"wine"}


LINK_OUT = "is a symbolic link that leads out of the repository; it is not followed"
LINK_TO_NOTHING = "is a symbolic link that leads to no file in the repository"


def test_spec_links_are_followed_inside_the_commit_only(work: Work, tmp_path: Path) -> None:
    base = work.git("rev-parse", "HEAD")
    secret = tmp_path / "secret.yaml"
    secret.write_text("root:x:0:0:the outside file's content\n")
    work.write("shared/staging.yaml", ENVIRONMENT.replace("name: staging", "name: shared"))
    os.symlink("../shared/staging.yaml", work.path / "environments/shared.yaml")
    os.symlink(str(secret), work.path / "environments/absolute.yaml")
    os.symlink("../../secret.yaml", work.path / "environments/climbing.yaml")
    os.symlink("nowhere.yaml", work.path / "policies/dangling.yaml")
    os.symlink("../shared", work.path / "policies/directory.yaml")
    (work.path / "specs/iris/model.yaml").rename(work.path / "shared/iris.yaml")
    os.symlink("../../shared/iris.yaml", work.path / "specs/iris/model.yaml")
    os.symlink("../../../secret.yaml", work.path / "specs/wine/model.yaml.tmp")
    (work.path / "specs/wine/model.yaml").unlink()
    (work.path / "specs/wine/model.yaml.tmp").rename(work.path / "specs/wine/model.yaml")
    commit = work.commit("links")
    repo = open_repo(work, tmp_path)

    catalog = repo.catalog(commit)
    assert set(catalog.models) == {"iris"} and catalog.models["iris"].spec_path == "specs/iris/model.yaml"
    assert set(catalog.environments) == {"staging", "shared"}
    assert [str(e) for e in catalog.errors] == [
        f"environments/absolute.yaml: {LINK_OUT}",
        f"environments/climbing.yaml: {LINK_OUT}",
        f"policies/dangling.yaml: {LINK_TO_NOTHING}",
        f"policies/directory.yaml: {LINK_TO_NOTHING}",
        f"specs/wine/model.yaml: {LINK_OUT}",
    ]
    assert controller.specs.load_tree(work.path) == catalog  # flywheel validate says the same
    blobs = repo.spec_blobs(commit)
    assert blobs["specs/iris/model.yaml"] == work.git("rev-parse", f"{commit}:shared/iris.yaml")
    assert "specs/wine/model.yaml" not in blobs and "environments/absolute.yaml" not in blobs
    assert repo.changed_models(base, commit).invalid == (
        "environments/absolute.yaml",
        "environments/climbing.yaml",
        "policies/dangling.yaml",
        "policies/directory.yaml",
        "specs/wine/model.yaml",
    )

    # a change to the file a spec's link leads to is a change to that spec
    work.write("shared/iris.yaml", model_spec("iris", C=9))
    after = work.commit("retune through the link")
    assert repo.changed_models(commit, after) == ChangedModels(modified=frozenset({"iris"}))
    assert repo.catalog(after).models["iris"].params == {"C": 9}


def test_a_linked_model_directory_is_not_read(work: Work, tmp_path: Path) -> None:
    os.symlink("iris", work.path / "specs/copy")
    commit = work.commit("linked directory")
    assert set(open_repo(work, tmp_path).catalog(commit).models) == {"iris", "wine"}


# ----------------------------------------------------------- changes


def changes_after(work: Work, tmp_path: Path, edit: Any) -> ChangedModels:
    old = work.git("rev-parse", "HEAD")
    edit(work)
    new = work.commit("edit")
    return open_repo(work, tmp_path).changed_models(old, new)


def test_code_change_names_the_model(work: Work, tmp_path: Path) -> None:
    changes = changes_after(work, tmp_path, lambda w: w.write("specs/iris/train.py", "print(2)\n"))
    assert changes == ChangedModels(modified=frozenset({"iris"}))


def test_new_file_in_source_dir_names_the_model(work: Work, tmp_path: Path) -> None:
    changes = changes_after(work, tmp_path, lambda w: w.write("specs/wine/lib/util.py", "X = 1\n"))
    assert changes.models == {"wine"}


def test_requirements_change_names_the_model(work: Work, tmp_path: Path) -> None:
    changes = changes_after(
        work, tmp_path, lambda w: w.write("specs/wine/requirements.txt", "scikit-learn==1.5\n")
    )
    assert changes == ChangedModels(modified=frozenset({"wine"}))


def test_spec_change_names_the_model(work: Work, tmp_path: Path) -> None:
    changes = changes_after(
        work, tmp_path, lambda w: w.write("specs/iris/model.yaml", model_spec("iris", C=9))
    )
    assert changes == ChangedModels(modified=frozenset({"iris"}))


def test_added_and_removed_models(work: Work, tmp_path: Path) -> None:
    def edit(w: Work) -> None:
        add_model(w, "digits")
        w.remove("specs/wine")

    changes = changes_after(work, tmp_path, edit)
    assert changes == ChangedModels(added=frozenset({"digits"}), removed=frozenset({"wine"}))


def test_shared_source_dir_names_every_model_using_it(work: Work, tmp_path: Path) -> None:
    shared = {"path": "../../src/shared", "requirements": "requirements.txt"}
    for name in ("alpha", "beta"):
        work.write(f"specs/{name}/model.yaml", model_spec(name, source=shared))
    work.write("src/shared/train.py", "print('shared')\n")
    work.write("src/shared/requirements.txt", "numpy\n")
    work.write("src/other/tool.py", "print('other')\n")
    work.commit("shared code")
    repo = open_repo(work, tmp_path)
    assert repo.catalog("HEAD").models["alpha"].source.path == "src/shared"

    changes = changes_after(work, tmp_path, lambda w: w.write("src/shared/train.py", "print('v2')\n"))
    assert changes == ChangedModels(modified=frozenset({"alpha", "beta"}))
    changes = changes_after(work, tmp_path, lambda w: w.write("src/shared/requirements.txt", "numpy<3\n"))
    assert changes.models == {"alpha", "beta"}
    changes = changes_after(work, tmp_path, lambda w: w.write("src/other/tool.py", "print('v2')\n"))
    assert not changes


def test_unrelated_file_changes_nothing(work: Work, tmp_path: Path) -> None:
    changes = changes_after(work, tmp_path, lambda w: w.write("README.md", "# changed\n"))
    assert changes == ChangedModels()
    assert not changes


def test_policy_and_environment_changes_are_named(work: Work, tmp_path: Path) -> None:
    def edit(w: Work) -> None:
        w.write("policies/default.yaml", POLICY.replace("[alice]", "[alice, bob]"))
        w.write("environments/staging.yaml", ENVIRONMENT + "  production: false\n")

    changes = changes_after(work, tmp_path, edit)
    assert changes.models == frozenset()
    assert changes.policies == {"default"}
    assert changes.environments == {"staging"}


def test_changed_paths(work: Work, tmp_path: Path) -> None:
    old = work.git("rev-parse", "HEAD")
    work.write("specs/iris/train.py", "print(3)\n")
    work.remove("README.md")
    work.write("docs/new.md", "new\n")
    new = work.commit()
    repo = open_repo(work, tmp_path)
    assert repo.changed_paths(old, new) == ["README.md", "docs/new.md", "specs/iris/train.py"]
    assert repo.changed_paths(new, new) == []


# ---------------------------------------------------- identity, export


def test_tree_id_is_stable_while_the_directory_is(work: Work, tmp_path: Path) -> None:
    first = work.git("rev-parse", "HEAD")
    work.write("specs/wine/train.py", "print('changed')\n")
    second = work.commit()
    repo = open_repo(work, tmp_path)

    iris_tree = repo.tree_id(first, "specs/iris")
    assert iris_tree is not None
    assert repo.tree_id(second, "specs/iris") == iris_tree
    assert repo.tree_id(second, "specs/iris/") == iris_tree
    assert repo.tree_id(first, "specs/wine") != repo.tree_id(second, "specs/wine")
    assert repo.tree_id(first, "specs/none") is None
    assert repo.tree_id(first, "") == work.git("rev-parse", f"{first}^{{tree}}")


def test_model_inputs_are_the_identity_pieces(work: Work, tmp_path: Path) -> None:
    first = work.git("rev-parse", "HEAD")
    work.write("specs/iris/requirements.txt", "scikit-learn>=1.5\n")
    second = work.commit()
    repo = open_repo(work, tmp_path)

    a, b = repo.model_inputs(first, "iris"), repo.model_inputs(second, "iris")
    assert a.source_tree == work.git("rev-parse", f"{first}:specs/iris")
    assert a.requirements_blob == work.git("rev-parse", f"{first}:specs/iris/requirements.txt")
    assert a.spec_blob == b.spec_blob == work.git("rev-parse", f"{first}:specs/iris/model.yaml")
    assert a.dockerfile_blob is None
    assert a.requirements_blob != b.requirements_blob
    assert repo.model_inputs(second, "wine").source_tree == repo.tree_id(first, "specs/wine")
    with pytest.raises(GitError, match="no valid model"):
        repo.model_inputs(first, "nope")


def test_export_tree_writes_content_exec_bits_and_symlinks(work: Work, tmp_path: Path) -> None:
    work.write("specs/iris/run.sh", "#!/bin/sh\necho hi\n", executable=True)
    work.write("specs/iris/data/sub/rows.csv", "a,b\n1,2\n")
    os.symlink("train.py", work.path / "specs/iris/main.py")
    commit = work.commit()
    dest = tmp_path / "export"

    open_repo(work, tmp_path).export_tree(commit, "specs/iris", dest)

    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == [
        "data", "data/sub", "data/sub/rows.csv", "main.py", "model.yaml", "requirements.txt", "run.sh",
        "train.py",
    ]  # fmt: skip
    assert (dest / "data/sub/rows.csv").read_text() == "a,b\n1,2\n"
    assert (dest / "run.sh").stat().st_mode & stat.S_IXUSR
    assert not (dest / "train.py").stat().st_mode & stat.S_IXUSR
    assert os.readlink(dest / "main.py") == "train.py"


def test_export_tree_of_a_missing_directory_fails(work: Work, tmp_path: Path) -> None:
    repo = open_repo(work, tmp_path)
    with pytest.raises(GitError):
        repo.export_tree("HEAD", "specs/none", tmp_path / "x")
    with pytest.raises(GitError):
        repo.export_tree("HEAD", "README.md", tmp_path / "x")


# ------------------------------------------------------------- mirrors


def test_file_url_is_mirrored_and_fetch_sees_new_commits_and_deleted_branches(
    work: Work, tmp_path: Path
) -> None:
    work.git("branch", "doomed")
    mirrors = tmp_path / "mirrors"
    repo = Repository.open(work.path.as_uri(), mirror_root=mirrors)
    assert repo.remote
    assert repo.path.parent == mirrors.resolve() or repo.path.parent.parent == mirrors.resolve()
    before = repo.branches()
    assert set(before) == {"main", "doomed"}

    work.write("specs/iris/train.py", "print('new')\n")
    new = work.commit("new")
    work.git("branch", "-D", "doomed")
    assert repo.branches() == before  # nothing changes until fetch

    repo.fetch()
    assert repo.branches() == {"main": new}
    assert repo.changed_models(before["main"], "main").modified == {"iris"}
    # reopening finds the existing mirror instead of cloning again
    again = Repository.open(work.path.as_uri(), mirror_root=mirrors)
    assert again.path == repo.path
    assert again.branches() == {"main": new}
    assert work.git("rev-parse", "HEAD") == new  # the source was only read


def test_unreachable_remote_is_a_git_error(tmp_path: Path) -> None:
    with pytest.raises(GitError, match="mirror"):
        Repository.open((tmp_path / "nowhere").as_uri(), mirror_root=tmp_path / "mirrors")


# -------------------------------------------------------------- errors


def test_missing_things_are_git_errors(work: Work, tmp_path: Path) -> None:
    repo = open_repo(work, tmp_path)
    for bad in ("0" * 40, "no-such-branch", "main~99", "deadbeef"):
        with pytest.raises(GitError):
            repo.resolve(bad)
        with pytest.raises(GitError):
            repo.catalog(bad)
    with pytest.raises(GitError):
        repo.changed_models("main", "0" * 40)
    with pytest.raises(GitError):
        repo.read_blob("0" * 40)
    tree = repo.tree_id("HEAD", "specs")
    assert tree is not None
    with pytest.raises(GitError, match="not a blob"):
        repo.read_blob(tree)
    with pytest.raises(GitError):
        Repository.open(str(tmp_path / "absent"), mirror_root=tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(GitError):
        Repository.open(str(plain), mirror_root=tmp_path)


def test_model_dropped_by_a_cross_check_is_named(work: Work, tmp_path: Path) -> None:
    changes = changes_after(work, tmp_path, lambda w: w.remove("environments/staging.yaml"))
    assert changes.environments == {"staging"}
    assert changes.removed == {"iris", "wine"}  # both roll out to the environment that is gone


def test_gc_pause_is_restored_after_large_loads_only() -> None:
    assert gc.isenabled()
    with gc_paused(10):
        assert gc.isenabled()
    with gc_paused(10_000):
        assert not gc.isenabled()
        with gc_paused(10_000):
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()

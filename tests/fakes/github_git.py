"""The fake GitHub's Git Data API, contents and pull-request writes, over a real bare repository.

:class:`~tests.fakes.github_api.FakeGitHub` given ``git_dir`` hands it the
requests it does not answer itself. Objects are written into the bare
repository with libgit2, so a controller that mirrors it over ``file://``
fetches the branches made through the API, as it would fetch GitHub's. It
answers with GitHub's shapes and status codes:

* ``GET .../git/commits/{sha}``; ``POST .../git/blobs`` (``utf-8`` or
  ``base64``), ``.../git/trees`` (``base_tree`` and entries by ``sha`` or
  ``content``), ``.../git/commits``;
* ``GET .../git/matching-refs/{prefix}``, ``GET .../git/ref/{ref}``,
  ``POST .../git/refs`` (422 when it exists), ``PATCH .../git/refs/{ref}``
  (422 for a move that is not a fast-forward unless ``force``); moving a
  branch moves the head of its open pull requests;
* ``GET .../contents/{path}?ref=``;
* ``POST .../pulls`` (422 when an open one has the same head and base),
  ``PATCH .../pulls/{n}`` (title, body, state).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pygit2
from pygit2.enums import FileMode

if TYPE_CHECKING:
    from tests.fakes.github_api import FakeGitHub, Request

Answer = tuple[int, dict[str, str], Any]

_MODES = {"100644": FileMode.BLOB, "100755": FileMode.BLOB_EXECUTABLE, "040000": FileMode.TREE}


class GitData:
    def __init__(self, fake: FakeGitHub, git_dir: Path) -> None:
        self.fake = fake
        self.repo = pygit2.Repository(str(git_dir))

    @property
    def _base(self) -> str:
        return f"{self.fake.api_url}/repos/{self.fake.repository}"

    def answer(self, request: Request, rest: str, login: str) -> Answer | None:
        """Answer ``request`` (``rest``: its path after ``/repos/{o}/{r}``); ``None`` when not ours."""
        method, body = request.method, request.body
        rest = unquote(rest)  # PyGithub quotes a ref's slashes (heads%2Fa%2Fb); GitHub reads them as slashes
        if (m := re.fullmatch(r"/git/commits/([0-9a-f]{40})", rest)) and method == "GET":
            commit = self._commit(m.group(1))
            return (200, {}, self._commit_json(commit)) if commit is not None else _not_found()
        if rest == "/git/blobs" and method == "POST":
            raw = (
                base64.b64decode(body["content"])
                if body.get("encoding") == "base64"
                else body["content"].encode()
            )
            oid = self.repo.create_blob(raw)
            return 201, {}, {"sha": str(oid), "url": f"{self._base}/git/blobs/{oid}"}
        if rest == "/git/trees" and method == "POST":
            return self._create_tree(body)
        if rest == "/git/commits" and method == "POST":
            return self._create_commit(body)
        if (m := re.fullmatch(r"/git/matching-refs/(.+)", rest)) and method == "GET":
            refs = [
                self._ref_json(name)
                for name in sorted(self._branches())
                if name.startswith(f"refs/{m.group(1)}")
            ]
            return 200, {}, refs
        if (m := re.fullmatch(r"/git/ref/(.+)", rest)) and method == "GET":
            name = f"refs/{m.group(1)}"
            return (200, {}, self._ref_json(name)) if name in self._branches() else _not_found()
        if rest == "/git/refs" and method == "POST":
            return self._create_ref(str(body["ref"]), str(body["sha"]))
        if (m := re.fullmatch(r"/git/refs/(.+)", rest)) and method == "PATCH":
            return self._update_ref(f"refs/{m.group(1)}", str(body["sha"]), force=bool(body.get("force")))
        if (m := re.fullmatch(r"/contents/(.+)", rest)) and method == "GET":
            return self._contents(m.group(1), request.query.get("ref", "refs/heads/main"))
        if rest == "/pulls" and method == "POST":
            return self._create_pull(body, login)
        if (m := re.fullmatch(r"/pulls/(\d+)", rest)) and method == "PATCH":
            return self._edit_pull(int(m.group(1)), body)
        return None

    # --------------------------------------------------------------- objects

    def _commit(self, sha: str) -> pygit2.Commit | None:
        try:
            obj = self.repo.get(sha)
        except ValueError:
            return None
        return obj if isinstance(obj, pygit2.Commit) else None

    def _commit_json(self, commit: pygit2.Commit) -> dict[str, Any]:
        sha = str(commit.id)
        return {
            "sha": sha,
            "node_id": f"C_{sha[:8]}",
            "url": f"{self._base}/git/commits/{sha}",
            "html_url": f"https://github.example/{self.fake.repository}/commit/{sha}",
            "author": _person(commit.author),
            "committer": _person(commit.committer),
            "message": commit.message,
            "tree": {"sha": str(commit.tree_id), "url": f"{self._base}/git/trees/{commit.tree_id}"},
            "parents": [{"sha": str(p), "url": f"{self._base}/git/commits/{p}"} for p in commit.parent_ids],
            "verification": {"verified": False, "reason": "unsigned", "signature": None, "payload": None},
        }

    def _create_tree(self, body: dict[str, Any]) -> Answer:
        index = pygit2.Index()
        if body.get("base_tree"):
            base = self.repo.get(body["base_tree"])
            if not isinstance(base, pygit2.Tree):
                return (
                    422,
                    {},
                    {"message": "Invalid tree info", "documentation_url": "https://docs.github.com/rest"},
                )
            index.read_tree(base)
        for entry in body["tree"]:
            oid = (
                self.repo.create_blob(entry["content"].encode())
                if "content" in entry
                else pygit2.Oid(hex=entry["sha"])
            )
            index.add(pygit2.IndexEntry(entry["path"], oid, _MODES[entry["mode"]]))
        tree = index.write_tree(self.repo)
        return (
            201,
            {},
            {"sha": str(tree), "url": f"{self._base}/git/trees/{tree}", "tree": [], "truncated": False},
        )

    def _create_commit(self, body: dict[str, Any]) -> Answer:
        who = body.get("author") or {"name": "flywheel-bot", "email": "bot@github.example"}
        signature = pygit2.Signature(who["name"], who["email"])
        parents = [pygit2.Oid(hex=p) for p in body.get("parents", [])]
        oid = self.repo.create_commit(
            None, signature, signature, body["message"], pygit2.Oid(hex=body["tree"]), parents
        )
        commit = self._commit(str(oid))
        assert commit is not None
        return 201, {}, self._commit_json(commit)

    # ------------------------------------------------------------------ refs

    def _branches(self) -> dict[str, str]:
        return {
            name: str(self.repo.lookup_reference(name).resolve().target)
            for name in self.repo.listall_references()
            if name.startswith("refs/heads/")
        }

    def _ref_json(self, name: str) -> dict[str, Any]:
        sha = self._branches()[name]
        return {
            "ref": name,
            "node_id": "REF_x",
            "url": f"{self._base}/git/{name}",
            "object": {"sha": sha, "type": "commit", "url": f"{self._base}/git/commits/{sha}"},
        }

    def _create_ref(self, name: str, sha: str) -> Answer:
        if name in self._branches():
            return (
                422,
                {},
                {"message": "Reference already exists", "documentation_url": "https://docs.github.com/rest"},
            )
        if self._commit(sha) is None:
            return (
                422,
                {},
                {"message": "Object does not exist", "documentation_url": "https://docs.github.com/rest"},
            )
        self.repo.references.create(name, sha)
        self._follow(name, sha)
        return 201, {}, self._ref_json(name)

    def _update_ref(self, name: str, sha: str, *, force: bool) -> Answer:
        current = self._branches().get(name)
        if current is None:
            return (
                422,
                {},
                {"message": "Reference does not exist", "documentation_url": "https://docs.github.com/rest"},
            )
        if not force and self.repo.merge_base(current, sha) != pygit2.Oid(hex=current):
            return (
                422,
                {},
                {
                    "message": "Update is not a fast forward",
                    "documentation_url": "https://docs.github.com/rest",
                },
            )
        self.repo.references.create(name, sha, force=True)
        self._follow(name, sha)
        return 200, {}, self._ref_json(name)

    def _follow(self, name: str, sha: str) -> None:
        """GitHub moves the head of the open pull requests of a branch that moves."""
        branch = name.removeprefix("refs/heads/")
        for pull in self.fake.pulls:
            if pull["state"] == "open" and pull["head"]["label"] == f"{self.fake.owner}:{branch}":
                pull["head"]["sha"] = sha

    def _contents(self, path: str, ref: str) -> Answer:
        try:
            commit = self.repo.revparse_single(ref).peel(pygit2.Commit)
            blob = commit.tree[path]
        except (KeyError, ValueError):
            return _not_found()
        if not isinstance(blob, pygit2.Blob):
            return _not_found()
        return (
            200,
            {},
            {
                "type": "file",
                "encoding": "base64",
                "size": blob.size,
                "name": path.rsplit("/", 1)[-1],
                "path": path,
                "content": base64.b64encode(blob.data).decode(),
                "sha": str(blob.id),
                "url": f"{self._base}/contents/{path}?ref={ref}",
            },
        )

    # ----------------------------------------------------------------- pulls

    def _create_pull(self, body: dict[str, Any], login: str) -> Answer:
        head, base = str(body["head"]), str(body["base"])
        label = head if ":" in head else f"{self.fake.owner}:{head}"
        sha = self._branches().get(f"refs/heads/{label.split(':', 1)[1]}")
        if sha is None:
            return 422, {}, {"message": "Validation Failed", "errors": [{"field": "head", "code": "invalid"}]}
        if any(
            p["state"] == "open" and p["head"]["label"] == label and p["base"]["ref"] == base
            for p in self.fake.pulls
        ):
            return (
                422,
                {},
                {
                    "message": "Validation Failed",
                    "errors": [
                        {
                            "resource": "PullRequest",
                            "code": "custom",
                            "message": f"A pull request already exists for {label}.",
                        }
                    ],
                },
            )
        number = max([p["number"] for p in self.fake.pulls] + list(self.fake.issues) + [0]) + 1
        pull = self.fake.add_pull_locked(number, head_ref=label.split(":", 1)[1], head_sha=sha, author=login)
        pull.update(title=body.get("title", ""), body=body.get("body"))
        pull["base"]["ref"] = base
        return 201, {}, {**pull, "merged": False}

    def _edit_pull(self, number: int, body: dict[str, Any]) -> Answer:
        pull = next((p for p in self.fake.pulls if p["number"] == number), None)
        if pull is None:
            return _not_found()
        for field in ("title", "body", "state"):
            if field in body:
                pull[field] = body[field]
        return 200, {}, {**pull, "merged": pull["merged_at"] is not None}


def _person(signature: pygit2.Signature) -> dict[str, str]:
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(signature.time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"name": signature.name, "email": signature.email, "date": when}


def _not_found() -> Answer:
    return 404, {}, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}

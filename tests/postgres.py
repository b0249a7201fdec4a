"""A throwaway PostgreSQL cluster for the tests, from Debian's ``postgresql``, and a database per test.

:class:`Cluster` runs ``initdb`` and ``pg_ctl`` (``/usr/lib/postgresql/<n>/bin``)
into a temporary directory, listening on a Unix socket only, with durability
off (the cluster is thrown away). ``initdb`` refuses to run as root, so under
root the cluster belongs to the ``postgres`` user the package creates, and
the programs run through ``runuser``. :meth:`Cluster.new_database` makes an
empty database (``CREATE DATABASE ... TEMPLATE template0``) and returns its
SQLAlchemy URL. ``tests/conftest.py`` starts one cluster per test session
(``postgres`` fixture) and gives each test that asks a fresh database
(``pg_url``); without PostgreSQL's programs those tests are skipped, or fail
under ``FLYWHEEL_TEST_REQUIRE_ALL=1`` (:mod:`tests.fixtures.required`).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from tests.fixtures.required import missing

__all__ = ["Cluster", "pg_bin"]

SUPERUSER = "flywheel"


def pg_bin() -> Path:
    """The newest installed PostgreSQL's server programs' directory; skips or fails the test without it."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if not found:
        missing("PostgreSQL's server programs (apt-get install postgresql)")
    return found[-1]


class Cluster:
    """A running PostgreSQL cluster in a temporary directory; :meth:`stop` removes it."""

    def __init__(self, bin_dir: Path) -> None:
        self._bin = bin_dir
        self._as: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
        if os.geteuid() == 0:  # initdb refuses root: the package's postgres user owns the cluster
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.root)
                missing("the postgres user to run PostgreSQL as (apt-get install postgresql)")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.data = self.root / "data"
        self.socket_dir = self.root
        self._names = itertools.count(1)
        self._started = False

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self._as, *args], capture_output=True, text=True, check=False, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({result.returncode}): {result.stderr or result.stdout}"
            )

    def start(self) -> Cluster:
        self._run(
            str(self._bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        options = (
            f"-k {self.socket_dir} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        log = self.root / "server.log"
        self._run(
            str(self._bin / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-o", options, "-w", "start"
        )
        self._started = True
        return self

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` (psycopg 3, over the cluster's socket)."""
        return f"postgresql+psycopg://{SUPERUSER}@/{database}?host={self.socket_dir}"

    def new_database(self) -> str:
        """A new empty database's URL; each call makes another one."""
        name = f"test_{next(self._names)}"
        with psycopg.connect(
            host=str(self.socket_dir), user=SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def stop(self) -> None:
        try:
            if self._started:
                self._run(str(self._bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

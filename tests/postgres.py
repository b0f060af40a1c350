"""A throwaway PostgreSQL cluster for the tests: initdb into a temp folder, pg_ctl start on a loopback port.

The binaries are the ones the `pgserver` wheel bundles (PostgreSQL with the
pgvector extension the memory store needs), or else the machine's (`initdb`
and `pg_ctl` on PATH, which then need pgvector installed). initdb refuses to run as root, so as root the
cluster is made and run by an unprivileged user (`postgres` where it exists,
else the one pgserver creates).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import psycopg

UNPRIVILEGED_USERS = ("postgres", "pgserver")


def _binaries() -> Path:
    try:
        from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError:
        on_path = shutil.which("initdb")
        assert on_path is not None, "no PostgreSQL: install the pgserver wheel, or initdb and pg_ctl on PATH"
        return Path(on_path).parent
    return POSTGRES_BIN_PATH


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user to run the cluster as (None: this process's own user will do)."""
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    from pgserver.utils import ensure_user_exists

    user = ensure_user_exists(UNPRIVILEGED_USERS[-1])
    assert user is not None
    return user


@contextmanager
def postgres_cluster(port: int) -> Iterator[str]:
    """A running cluster's URL (database `postgres`, user `postgres`, trust auth on loopback); removed afterwards."""
    binaries = _binaries()
    user = _run_as()
    folder = Path(tempfile.mkdtemp(prefix="llm-server-pg-"))
    data = folder / "data"
    prefix: list[str] = []
    if user is not None:
        if not str(binaries).startswith("/usr/"):  # pgserver's wheel in a venv: let the user reach it
            from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

            ensure_prefix_permissions(binaries)
            ensure_folder_permissions(binaries, 0o055)
            ensure_folder_permissions(binaries.parent / "lib", 0o044)
        folder.chmod(0o755)
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", user.pw_name, "--"]
    subprocess.run(
        [*prefix, str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"],
        check=True,
        capture_output=True,
        text=True,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={folder} -c fsync=off"
    subprocess.run(
        [*prefix, str(binaries / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-o", options, "-w", "start"],
        check=True,
        capture_output=True,
        text=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


def new_database(cluster_url: str) -> str:
    """A fresh, empty database in the cluster, and its URL."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    with closing(psycopg.connect(cluster_url, autocommit=True)) as db:
        db.execute(f"CREATE DATABASE {name}")
    return cluster_url.rsplit("/", 1)[0] + "/" + name

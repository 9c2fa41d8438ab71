"""A throw-away PostgreSQL server in a temp directory, from Debian's binaries (tests and benchmarks).

``initdb`` refuses to run as root, so as root every server command runs as the ``postgres``
user (``runuser -u postgres --``) on a directory that user owns. The server listens on
127.0.0.1 at a free port with ``trust`` authentication and its unix socket in the temp dir;
``fsync`` is off (a test server: speed over durability). Nothing outside the temp dir changes.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from optuna_deelbo.report._dashboard import _free_port

__all__ = ["PostgresServer", "find_bin_dir", "postgres_server"]


@dataclass(frozen=True)
class PostgresServer:
    """A running test server: its URL, and ``stop()`` / ``start()`` to take it down and up again."""

    url: str
    stop: Callable[[], None]
    start: Callable[[], None]


def find_bin_dir() -> Path | None:
    """Debian's PostgreSQL binaries (version 15 preferred, else the newest), or ``None`` if absent."""
    preferred = Path("/usr/lib/postgresql/15/bin")
    if (preferred / "initdb").is_file():
        return preferred
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


@contextlib.contextmanager
def postgres_server(bin_dir: Path, *, max_connections: int = 200) -> Iterator[PostgresServer]:
    """Start a server; yield it (``url``: ``postgresql+psycopg://``, database ``postgres``); stop it and delete it.

    Raises:
        RuntimeError: initdb or pg_ctl failed (the message holds their output and the server log).
    """
    base = Path(tempfile.mkdtemp(prefix="deelbo-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log = base / "data", base / "server.log"
    port = _free_port("127.0.0.1")

    def run(*argv: str) -> None:
        done = subprocess.run([*as_user, *argv], capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            server_log = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}\n{server_log}")

    started = False
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        options = (
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections={max_connections} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        pg_ctl = str(bin_dir / "pg_ctl")

        def start() -> None:
            run(pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")

        def stop() -> None:
            run(pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop")

        start()
        started = True
        yield PostgresServer(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", stop, start)
    finally:
        if started:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)

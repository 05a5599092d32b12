"""Private PostgreSQL and RabbitMQ servers for the destructive fault scenarios, and a stack pointed at them.

The session's servers (tests/services.py, or those DATABASE_URL and AMQP_URL name) carry every other test of the
run: they are never stopped, restarted or alarmed. A scenario that does that gets servers of its own, started once
per pytest session when a test first asks for one (the `rabbit_node` and `pg_cluster` fixtures) and torn down at the
session's end:

- `RabbitNode`: a RabbitMQ node (`tmfault-<pytest pid>@localhost`, its own ports, data and logs, no plugins), run
  as the rabbitmq user as the packaged scripts require, driven with `rabbitmqctl -n <node>`: stop and start,
  close every connection, raise and lower the memory alarm.
- `PgCluster`: a cluster of the newest PostgreSQL server installed (initdb'd as postgres, which refuses root; trust
  auth; its socket in its own dir), with the migrated template made as tests/conftest.py makes the shared one;
  restartable at will.
- `TlsPgCluster` and `TlsRabbitNode` (`tls_pg`, `tls_rabbit`, on the certificates of `tls_files`): a cluster and a
  node that take TLS only and require client certificates, for tests/faults/test_tls.py; in /tmp/tmtls-<pid>.

Ports are picked below the kernel's ephemeral range: a port in it can be handed to an outgoing connection while
the node is down, and the node then fails to listen again. A session killed before its teardown leaves its
servers behind; the next session stops those whose pytest process is gone (names and dirs carry its pid).

`fault_stack` points a harness stack (tests/faults/harness.py) at any mix of the shared and private servers, with
short heartbeats, reconnects and consumer checks; a role of it can be pointed elsewhere still (a proxy, see
tests/faults/proxy.py) through `stack.add(role, AMQP_URL=..., DATABASE_URL=...)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import shutil
import signal
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aio_pika
import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from taskmill import topology
from taskmill.db import connect
from taskmill.migrate import migrate, migration_files
from taskmill.settings import Settings
from tests.faults import procs
from tests.faults.harness import BrokerView, Stack, run_command, view_of
from tests.services import free_port
from tests.tools import PG_CTL, RABBIT_BIN, RABBITMQ_SERVER, RABBITMQCTL, RUNUSER, need, pg_bin

_ROOT = Path("/tmp")
_PG_BIN = pg_bin()
_RABBIT_BIN = RABBIT_BIN
_RABBIT_HOME = "/var/lib/rabbitmq"  # the shared node's Erlang cookie, so rabbitmqctl reaches ours too

# What the private stacks run with: failures noticed within seconds, not the production tens of seconds.
RECOVERY_ENV = {
    "TASKMILL_AMQP_HEARTBEAT_S": "2",  # aiormq gives up after (2 + 1) * 3 s of silence, the broker after ~2 * 2 s
    "TASKMILL_AMQP_RECONNECT_S": "0.5",
    "TASKMILL_CONSUMER_CHECK_S": "1",
    "TASKMILL_DB_RETRY_MAX_S": "1",
}


def _session_dir() -> Path:
    return _ROOT / f"tmfault-{os.getpid()}"


def _owned_dir(path: Path, user: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.chown(path, user, user)
    return path


async def _run(*argv: str, timeout: float = 60, check: bool = True) -> str:
    """`run_command` in /tmp, where the users the servers run as may be."""
    return await run_command(*argv, timeout=timeout, check=check, cwd=_ROOT)


def _run_sync(argv: list[str], timeout: float = 60) -> None:
    """`_run` for the session fixtures, which run outside any event loop."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=_ROOT,
                            start_new_session=True)  # fmt: skip
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# -- RabbitMQ -------------------------------------------------------------------------------------------------


@dataclass
class RabbitNode:
    name: str
    port: int
    dist_port: int
    base: Path
    running: bool = False
    alarmed: bool = False

    @classmethod
    def create(cls) -> RabbitNode:
        base = _owned_dir(_session_dir() / "rabbit", "rabbitmq")
        node = cls(f"tmfault-{os.getpid()}@localhost", free_port(), free_port(), base)
        files = {
            "rabbitmq.conf": f"listeners.tcp.default = 127.0.0.1:{node.port}\n",
            "enabled_plugins": "[].\n",
            "rabbitmq-env.conf": "",  # not the shared node's /etc/rabbitmq/rabbitmq-env.conf
        }
        for name, text in files.items():
            (base / name).write_text(text)
            shutil.chown(base / name, "rabbitmq", "rabbitmq")
        return node

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _server_env(self) -> list[str]:
        b = self.base
        return [
            f"HOME={_RABBIT_HOME}",
            f"RABBITMQ_NODENAME={self.name}",
            f"RABBITMQ_DIST_PORT={self.dist_port}",
            f"RABBITMQ_CONFIG_FILE={b / 'rabbitmq'}",
            f"RABBITMQ_CONF_ENV_FILE={b / 'rabbitmq-env.conf'}",
            f"RABBITMQ_ENABLED_PLUGINS_FILE={b / 'enabled_plugins'}",
            f"RABBITMQ_MNESIA_BASE={b / 'mnesia'}",
            f"RABBITMQ_LOG_BASE={b / 'log'}",
            f"RABBITMQ_PID_FILE={b / 'pid'}",
            "ERL_EPMD_ADDRESS=127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
        ]

    def _ctl_argv(self, *args: str) -> list[str]:
        # Not the /usr/sbin wrapper: it starts the CLI through `su`, in a session a timeout cannot reach.
        return ["runuser", "-u", "rabbitmq", "--", "env", f"HOME={_RABBIT_HOME}", str(_RABBIT_BIN / "rabbitmqctl"),
                "-n", self.name, "-q", *args]  # fmt: skip

    async def ctl(self, *args: str, timeout: float = 60, check: bool = True) -> str:
        return await _run(*self._ctl_argv(*args), timeout=timeout, check=check)

    def _pid(self) -> int | None:
        """The node's OS process, if it is alive."""
        try:
            pid = int((self.base / "pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if procs.alive(pid) and "beam" in procs.cmdline(pid) else None

    async def start(self, timeout: float = 90) -> None:
        """Starts the node (detached) and returns once it takes AMQP connections (a boot takes 5-20 s here)."""
        await _run(
            "runuser", "-u", "rabbitmq", "--", "env", *self._server_env(), str(_RABBIT_BIN / "rabbitmq-server"),
            "-detached",
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            # await_startup answers at once (with an error) until the node has registered with epmd.
            out = await self.ctl("await_startup", "--timeout", "30", timeout=40, check=False)
            if "Error" not in out and await self._answers():
                break
            if loop.time() > deadline:
                raise AssertionError(f"RabbitMQ node {self.name} did not start in {timeout} s:\n{out}\n{self.log()}")
            await asyncio.sleep(0.5)
        self.running = True

    async def _answers(self) -> bool:
        try:
            conn = await aio_pika.connect(self.url, timeout=5)
        except Exception:
            return False
        await conn.close()
        return True

    async def stop(self) -> None:
        """`rabbitmqctl stop`: the whole node goes, as on a crash of its host or a restart; returns once its
        process is gone."""
        self.running = False
        pid = self._pid()
        await self.ctl("stop", timeout=90, check=False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while pid is not None and procs.alive(pid):
            if loop.time() > deadline:
                os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.1)

    async def close_all_connections(self) -> None:
        await self.ctl("close_all_connections", "fault test: close_all_connections")

    async def memory_alarm(self, on: bool) -> None:
        """A watermark no node stays under raises the memory alarm (publishers are blocked); the default ends it."""
        self.alarmed = True  # until the default is surely back
        await self.ctl("set_vm_memory_high_watermark", "0.00001" if on else "0.4")
        self.alarmed = on

    async def alarms(self) -> str:
        return await self.ctl("eval", "rabbit_alarm:get_alarms().")

    async def ensure_ready(self) -> None:
        """Up and without an alarm, whatever the test before left."""
        if not self.running or not await self._answers():
            if self._pid() is not None:  # up, yet not answering
                await self.stop()
            await self.start()
        if self.alarmed:
            await self.memory_alarm(False)

    async def connections(self) -> list[dict[str, str]]:
        """name, user-given connection name, heartbeat timeout and peer port of every client connection."""
        out = await self.ctl(
            "list_connections", "--no-table-headers", "name", "client_properties", "timeout", "peer_port"
        )
        return _parse_connections(out)

    def log(self, tail: int = 3000) -> str:
        logs = sorted((self.base / "log").glob("*.log"))
        return "".join(p.read_text(errors="replace")[-tail:] for p in logs[:1])

    def destroy(self) -> None:
        pid = self._pid()
        _run_sync(self._ctl_argv("stop"))
        if pid is not None and procs.alive(pid):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.base.parent.rmdir()  # once the other server's dir is gone too


def _parse_connections(out: str) -> list[dict[str, str]]:
    rows = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) < 4:
            continue
        named = re.search(r'\{"connection_name",(?:longstr,)?"([^"]*)"\}', parts[1])
        rows.append({"name": parts[0], "connection_name": named[1] if named else "", "timeout": parts[2],
                     "peer_port": parts[3]})  # fmt: skip
    return rows


# -- PostgreSQL -----------------------------------------------------------------------------------------------


@dataclass
class PgCluster:
    port: int
    base: Path
    template: str = ""
    running: bool = False

    @classmethod
    def create(cls) -> PgCluster:
        return cls(free_port(), _owned_dir(_session_dir() / "pg", "postgres"))

    @property
    def data(self) -> Path:
        return self.base / "data"

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _pg(self, tool: str, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", str(_PG_BIN / tool), *args]

    async def init(self) -> None:
        await _run(*self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                             "-E", "UTF8", "--locale=C.UTF-8"))  # fmt: skip
        # In the config file, so a restart (also `pg_ctl restart`) keeps them. fsync off: the scenarios crash
        # the server, never the machine, so what it wrote is in the page cache and survives. synchronous_commit
        # stays on: off, a crash loses the last commits the clients were told of (a run started twice).
        conf = (
            f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.base}'\n"
            "fsync = off\nfull_page_writes = off\nmax_connections = 200\n"
        )
        with (self.data / "postgresql.conf").open("a") as f:
            f.write(conf)
        await self.start()
        self.template = "taskmill_template_" + uuid.uuid4().hex[:6]
        await migrate(self.url(self.template))
        admin = await asyncpg.connect(self.url("postgres"))
        try:
            await admin.execute(f'ALTER DATABASE "{self.template}" WITH IS_TEMPLATE true')
        finally:
            await admin.close()
        assert migration_files(), "no migrations"

    async def start(self) -> None:
        await _run(*self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.base / "log"), "-w", "-t", "60", "start"))
        self.running = True

    async def stop(self, mode: str = "immediate") -> None:
        """`immediate`: as if the server crashed (no checkpoint, every backend killed at once)."""
        self.running = False
        await _run(*self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop"))

    async def restart(self, mode: str = "immediate") -> None:
        await _run(*self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.base / "log"), "-m", mode, "-w", "restart"))
        self.running = True

    async def ensure_ready(self) -> None:
        if not self.running:
            await self.start()

    @asynccontextmanager
    async def database(self) -> AsyncIterator[str]:
        """A database of the test's own, cloned from the migrated template; its URL. Dropped afterwards."""
        name = f"tmfault_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(self.url("postgres"))
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        finally:
            await admin.close()
        try:
            yield self.url(name)
        finally:
            await self.ensure_ready()
            admin = await asyncpg.connect(self.url("postgres"))
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()

    def log(self, tail: int = 3000) -> str:
        try:
            return (self.base / "log").read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            _run_sync(self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop"))
        shutil.rmtree(self.base, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.base.parent.rmdir()


async def terminate_backends(db: asyncpg.Connection) -> int:
    """pg_terminate_backend on every other connection to db's database (the roles'); how many it ended."""
    ended: int = await db.fetchval(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t"
    )
    return ended


# -- leftovers of killed sessions -----------------------------------------------------------------------------


def _reap_leftovers(prefix: str = "tmfault", node_class: type[RabbitNode] = RabbitNode) -> None:
    """Stops the servers of earlier sessions (dirs `<prefix>-<pid>`) whose pytest process is gone, and removes
    their dirs."""
    for path in _ROOT.glob(f"{prefix}-*"):
        pid = path.name.removeprefix(f"{prefix}-")
        if not pid.isdigit() or procs.alive(int(pid)):
            continue
        node = node_class(f"{prefix}-{pid}@localhost", 0, 0, path / "rabbit")
        for cli in procs.pids():  # an Erlang CLI of that session still waiting on its node
            if f"-n {node.name} " in procs.cmdline(cli) and "rabbitmqctl" in procs.cmdline(cli):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(cli, signal.SIGKILL)
        node.destroy()
        PgCluster(0, path / "pg").destroy()
        shutil.rmtree(path, ignore_errors=True)


# -- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rabbit_node() -> Iterator[RabbitNode]:
    need(RABBITMQ_SERVER, RABBITMQCTL, RUNUSER)
    _reap_leftovers()
    node = RabbitNode.create()
    try:
        asyncio.run(node.start())
        yield node
    finally:
        node.destroy()


@pytest.fixture
async def rabbit(rabbit_node: RabbitNode) -> RabbitNode:
    """The private RabbitMQ node, up and without an alarm, whatever the test before did to it."""
    await rabbit_node.ensure_ready()
    return rabbit_node


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    need(PG_CTL, RUNUSER)
    _reap_leftovers()
    cluster = PgCluster.create()
    try:
        asyncio.run(cluster.init())
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
async def pg(pg_cluster: PgCluster) -> PgCluster:
    """The private PostgreSQL cluster, up, whatever the test before did to it."""
    await pg_cluster.ensure_ready()
    return pg_cluster


# -- a stack on them ------------------------------------------------------------------------------------------


class NodeBrokerView(BrokerView):
    """The harness's look at the broker, for a private node: `rabbitmqctl -n`, and its own connection opened
    again after the node went away."""

    def __init__(self, settings: Settings, node: RabbitNode | None) -> None:
        super().__init__(settings)
        self.node = node

    @asynccontextmanager
    async def channel(self) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
        transport = self._conn.transport if self._conn is not None else None
        if self._conn is None or self._conn.is_closed or transport is None or transport.connection.is_closed:
            with contextlib.suppress(Exception):
                await self.close()
            await self.open()
        async with super().channel() as channel:
            yield channel

    async def _rabbitmqctl(self, *args: str) -> str:
        return await (self.node.ctl(*args) if self.node is not None else super()._rabbitmqctl(*args))


@dataclass(eq=False)
class FaultStack(Stack):
    """A harness stack whose processes also get `extra_env` (RECOVERY_ENV and the private servers' URLs)."""

    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(**(self.extra_env | extra))

    async def reconnect_db(self, timeout: float = 30) -> None:
        """The test's own connection again, after the database restarted under it."""
        with contextlib.suppress(Exception):
            await self.db.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                self.db = await connect(self.settings.database_url)
                return
            except (OSError, asyncpg.PostgresError):
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.2)


@asynccontextmanager
async def fault_stack(
    settings: Settings,
    workdir: Path,
    *,
    db: asyncpg.Connection | None = None,
    rabbit: RabbitNode | None = None,
    pg: PgCluster | None = None,
    **env: str,
) -> AsyncIterator[FaultStack]:
    """A stack on the test's database and prefix (`settings`), on the private node and cluster when given
    (then a database of its own in the cluster), with RECOVERY_ENV and `env` for every process."""
    async with contextlib.AsyncExitStack() as resources:
        updates: dict[str, Any] = {}
        if rabbit is not None:
            updates["amqp_url"] = rabbit.url
        if pg is not None:
            updates["database_url"] = await resources.enter_async_context(pg.database())
        settings = settings.model_copy(update=updates)
        opened = db is None or pg is not None
        if opened:
            db = await connect(settings.database_url)
        assert db is not None
        view = view_of(settings) if settings.transport_name == "postgres" else lambda s: NodeBrokerView(s, rabbit)
        stack = await FaultStack.open(settings, db, workdir, broker_view=view, extra_env=RECOVERY_ENV | env)
        try:
            yield stack
        finally:
            if rabbit is not None:  # the processes stop gracefully only with a broker to hand their work back to
                await rabbit.ensure_ready()
            if pg is not None:
                await pg.ensure_ready()
            await stack.close()
            if rabbit is not None:  # the node lives on for the next scenario
                with contextlib.suppress(Exception):
                    conn = await aio_pika.connect(rabbit.url)
                    async with conn:
                        await topology.delete(await conn.channel(), topology.Names(settings.broker_prefix))
            if opened:
                with contextlib.suppress(Exception):
                    await stack.db.close()


# -- TLS ------------------------------------------------------------------------------------------------------
#
# A PostgreSQL cluster and a RabbitMQ node that take TLS only, on certificates of a CA made for the session
# (tests/faults/test_tls.py). Their dirs are /tmp/tmtls-<pytest pid>, apart from the fault servers' /tmp/tmfault-*
# (whose leftover reaper knows nothing of these): `_reap_tls_leftovers` is theirs. Not pytest's tmp_path: its
# dirs are root's alone, and the servers, run as postgres and rabbitmq, must read their certificates.

TLS_USER = "taskmill"  # the PostgreSQL user that must show a client certificate (its CN) to connect


def _tls_dir() -> Path:
    return _ROOT / f"tmtls-{os.getpid()}"


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def _certificate(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    *,
    usage: x509.ObjectIdentifier | None = None,
    names: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    """A CA's self-signed certificate (no `issuer`), or a leaf for `usage` (server or client auth) signed by it."""
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is None:
        usages = {"key_cert_sign": True, "crl_sign": True}
    else:
        usages = {"key_cert_sign": False, "crl_sign": False}
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False
        )
        if usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    builder = builder.add_extension(
        x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                      data_encipherment=False, key_agreement=issuer is not None, encipher_only=False,
                      decipher_only=False, **usages),
        critical=True,
    )  # fmt: skip
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of the session's CA and what it signed, and of a CA that signed nothing the servers show."""

    dir: Path
    ca: Path  # signed the servers' certificate and the client's
    server_cert: Path  # CN and DNS name localhost, IP 127.0.0.1 (not 127.0.0.2)
    server_key: Path  # root's; each server gets a copy of its own (`server_key_for`)
    client_cert: Path  # CN=taskmill (TLS_USER), client auth
    client_key: Path
    other_ca: Path  # a CA that signed neither server's certificate
    stranger_cert: Path  # CN=taskmill too, but signed by other_ca
    stranger_key: Path

    @classmethod
    def make(cls, where: Path) -> TlsFiles:
        where.mkdir(parents=True, exist_ok=True)
        where.chmod(0o755)  # the servers' users pass through to read the CA and their certificate

        def write(name: str, data: bytes, mode: int = 0o644) -> Path:
            path = where / name
            path.write_bytes(data)
            path.chmod(mode)
            return path

        def pem(cert: x509.Certificate) -> bytes:
            return cert.public_bytes(serialization.Encoding.PEM)

        ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca = _certificate("taskmill test CA", ca_key)
        other = _certificate("taskmill test CA", other_key)  # the same name: only the signature tells them apart
        server_key, client_key, stranger_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
        server = _certificate(
            "localhost",
            server_key,
            (ca, ca_key),
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            names=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))],
        )
        client = _certificate(TLS_USER, client_key, (ca, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        stranger = _certificate(TLS_USER, stranger_key, (other, other_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        return cls(
            dir=where,
            ca=write("ca.pem", pem(ca)),
            server_cert=write("server.pem", pem(server)),
            server_key=write("server.key", _pem_key(server_key), 0o600),
            client_cert=write("client.pem", pem(client)),
            client_key=write("client.key", _pem_key(client_key), 0o600),
            other_ca=write("other-ca.pem", pem(other)),
            stranger_cert=write("stranger.pem", pem(stranger)),
            stranger_key=write("stranger.key", _pem_key(stranger_key), 0o600),
        )

    def server_key_for(self, user: str, dest: Path) -> Path:
        """A copy of the server's key that only `user` reads (PostgreSQL refuses a key others may read)."""
        shutil.copyfile(self.server_key, dest)
        dest.chmod(0o600)
        shutil.chown(dest, user, user)
        return dest

    def client_context(self) -> ssl.SSLContext:
        """A client's context: verifies the server against the session's CA, host name included, and shows the
        client certificate."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        context.load_cert_chain(self.client_cert, self.client_key)
        return context

    def amqp_env(self) -> dict[str, str]:
        """The TASKMILL_AMQP_* settings of a role that verifies the node and shows the client certificate."""
        return {
            "TASKMILL_AMQP_CA_FILE": str(self.ca),
            "TASKMILL_AMQP_CERT_FILE": str(self.client_cert),
            "TASKMILL_AMQP_KEY_FILE": str(self.client_key),
        }


@dataclass
class TlsPgCluster(PgCluster):
    """A PostgreSQL cluster that refuses every TCP connection without TLS (`hostnossl ... reject`) and lets
    TLS_USER in only with a client certificate of the session's CA (`cert clientcert=verify-full`); other users
    (postgres) over TLS without one. It listens on 127.0.0.1 and 127.0.0.2 (which its certificate does not name).
    The tests' own administration goes through its Unix socket (`admin_url`); it has no template, and `url` is
    plaintext (refused): URLs of it are made with `dsn` and `mutual_dsn`."""

    tls: TlsFiles | None = None

    @classmethod
    def create_tls(cls, tls: TlsFiles) -> TlsPgCluster:
        return cls(free_port(), _owned_dir(_tls_dir() / "pg", "postgres"), tls=tls)

    def dsn(self, dbname: str, *, user: str = TLS_USER, host: str = "127.0.0.1", **params: str | Path) -> str:
        """A URL of the cluster with query parameters (sslmode, sslrootcert, ...)."""
        query = urlencode({k: str(v) for k, v in params.items()})
        return f"postgresql://{user}@{host}:{self.port}/{dbname}" + (f"?{query}" if query else "")

    def mutual_dsn(self, dbname: str) -> str:
        """TLS_USER with verify-full and the client certificate: what the roles are given."""
        assert self.tls is not None
        t = self.tls
        return self.dsn(dbname, sslmode="verify-full", sslrootcert=t.ca, sslcert=t.client_cert, sslkey=t.client_key)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.base}&port={self.port}"

    async def init(self) -> None:
        assert self.tls is not None
        await _run(*self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                             "-E", "UTF8", "--locale=C.UTF-8"))  # fmt: skip
        key = self.tls.server_key_for("postgres", self.base / "server.key")
        conf = (
            f"port = {self.port}\nlisten_addresses = '127.0.0.1,127.0.0.2'\nunix_socket_directories = '{self.base}'\n"
            "fsync = off\nfull_page_writes = off\n"
            f"ssl = on\nssl_cert_file = '{self.tls.server_cert}'\nssl_key_file = '{key}'\n"
            f"ssl_ca_file = '{self.tls.ca}'\n"
        )
        with (self.data / "postgresql.conf").open("a") as f:
            f.write(conf)
        (self.data / "pg_hba.conf").write_text(
            "local     all  all                      trust\n"
            "hostnossl all  all          0.0.0.0/0  reject\n"
            "hostnossl all  all          ::/0       reject\n"
            f"hostssl   all  {TLS_USER}  127.0.0.0/8 cert clientcert=verify-full\n"
            "hostssl   all  all          127.0.0.0/8 trust\n"
        )
        await self.start()
        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute(f'CREATE ROLE "{TLS_USER}" LOGIN CREATEDB')
        finally:
            await admin.close()

    async def drop_database(self, name: str) -> None:
        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@dataclass
class TlsRabbitNode(RabbitNode):
    """A RabbitMQ node with a TLS listener only (on 127.0.0.1 and 127.0.0.2, one port), which requires a client
    certificate of the session's CA (verify_peer, fail_if_no_peer_cert). Users log in as ever (guest)."""

    tls: TlsFiles | None = None

    @classmethod
    def create_tls(cls, tls: TlsFiles) -> TlsRabbitNode:
        base = _owned_dir(_tls_dir() / "rabbit", "rabbitmq")
        node = cls(f"tmtls-{os.getpid()}@localhost", free_port(), free_port(), base, tls=tls)
        key = tls.server_key_for("rabbitmq", base / "server.key")
        files = {
            "rabbitmq.conf": (
                "listeners.tcp = none\n"
                f"listeners.ssl.default = 127.0.0.1:{node.port}\n"
                f"listeners.ssl.other = 127.0.0.2:{node.port}\n"
                f"ssl_options.cacertfile = {tls.ca}\n"
                f"ssl_options.certfile = {tls.server_cert}\n"
                f"ssl_options.keyfile = {key}\n"
                "ssl_options.verify = verify_peer\n"
                "ssl_options.fail_if_no_peer_cert = true\n"
            ),
            "enabled_plugins": "[].\n",
            "rabbitmq-env.conf": "",
        }
        for name, text in files.items():
            (base / name).write_text(text)
            shutil.chown(base / name, "rabbitmq", "rabbitmq")
        return node

    @property
    def url(self) -> str:
        return self.url_at("127.0.0.1")

    def url_at(self, host: str, scheme: str = "amqps") -> str:
        return f"{scheme}://guest:guest@{host}:{self.port}/"

    async def _answers(self) -> bool:
        assert self.tls is not None
        try:
            conn = await aio_pika.connect(self.url, ssl_context=self.tls.client_context(), timeout=5)
        except Exception:
            return False
        await conn.close()
        return True


@pytest.fixture(scope="session")
def tls_files() -> Iterator[TlsFiles]:
    """The session's CA, server and client certificates (and a CA that signed none of them)."""
    _reap_leftovers("tmtls", TlsRabbitNode)
    try:
        yield TlsFiles.make(_tls_dir() / "certs")
    finally:
        shutil.rmtree(_tls_dir(), ignore_errors=True)


@pytest.fixture(scope="session")
def tls_rabbit(tls_files: TlsFiles) -> Iterator[TlsRabbitNode]:
    """The TLS-only RabbitMQ node, started when a test first asks for it."""
    need(RABBITMQ_SERVER, RABBITMQCTL, RUNUSER)
    node = TlsRabbitNode.create_tls(tls_files)
    try:
        asyncio.run(node.start())
        yield node
    finally:
        node.destroy()


@pytest.fixture(scope="session")
def tls_pg(tls_files: TlsFiles) -> Iterator[TlsPgCluster]:
    """The TLS-only PostgreSQL cluster, started when a test first asks for it."""
    need(PG_CTL, RUNUSER)
    cluster = TlsPgCluster.create_tls(tls_files)
    try:
        asyncio.run(cluster.init())
        yield cluster
    finally:
        cluster.destroy()

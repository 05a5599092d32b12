"""TLS to PostgreSQL and RabbitMQ is a matter of settings (SPEC X2): DATABASE_URL with sslmode=verify-full and its
certificate parameters, an amqps:// AMQP_URL with TASKMILL_AMQP_CA_FILE, _CERT_FILE and _KEY_FILE.

Against a PostgreSQL cluster and a RabbitMQ node that take TLS only and want a client certificate
(tests/faults/servers.py: `tls_pg`, `tls_rabbit`, certificates of a CA made for the session): the roles run a task
end to end over mutual TLS; plaintext, a missing or foreign client certificate, and a server certificate of another
CA or for another name are refused; TLS settings that cannot work stop a role with one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives import serialization

from taskmill.broker import connect
from taskmill.db import connect as db_connect
from taskmill.models import Schedule, TaskCreate
from taskmill.settings import Settings
from taskmill.store.tasks import create_task
from tests.faults import servers
from tests.faults.servers import TLS_USER, TlsFiles, TlsPgCluster, TlsRabbitNode
from tests.helpers import start_role_process, taskmill, wait_until

# The TLS servers' session fixtures, registered for this module (tests/faults/conftest.py registers the others).
tls_files = servers.tls_files
tls_pg = servers.tls_pg
tls_rabbit = servers.tls_rabbit

# The refusals below come from the servers (or the TLS handshake) at once; a hang would be a failure too.
_CONNECT_TIMEOUT_S = 15


def _broker_settings(
    node: TlsRabbitNode,
    url: str | None = None,
    *,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
) -> Settings:
    """Settings for the TLS node (at `url`, else its amqps:// URL) with these TLS files."""
    return Settings(
        amqp_url=url or node.url,
        amqp_ca_file=str(ca or ""),
        amqp_cert_file=str(cert or ""),
        amqp_key_file=str(key or ""),
    )


async def _broker_refuses(settings: Settings) -> str:
    """The error taskmill's broker connection fails with; fails the test if it connects."""
    try:
        async with asyncio.timeout(_CONNECT_TIMEOUT_S):
            connection = await connect(settings, "taskmill-tls-test")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    await connection.close()
    raise AssertionError(f"connected to {settings.amqp_url} with {settings.amqp_ca_file=} {settings.amqp_cert_file=}")


async def _broker_answers(settings: Settings) -> None:
    async with asyncio.timeout(_CONNECT_TIMEOUT_S):
        connection = await connect(settings, "taskmill-tls-test")
    try:
        channel = await connection.channel()
        await channel.close()
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def _logs_anew(server: TlsPgCluster | TlsRabbitNode, text: str) -> AsyncIterator[None]:
    """Fails unless the server's log says `text` once more after the block than before it (the server's own
    reason for a refusal, which the client may see only as a reset connection). The log is written a little
    later than the client hears of it: waited for."""

    def said() -> int:
        return server.log(tail=1 << 30).count(text)

    before = said()
    yield

    async def logged() -> bool:
        return said() > before

    try:
        await wait_until(logged, 10, interval=0.1, what=repr(text))
    except AssertionError as exc:
        raise AssertionError(f"{exc} in the log of {server}:\n{server.log()}") from None


async def _pg_refuses(dsn: str) -> str:
    try:
        conn = await asyncpg.connect(dsn, timeout=_CONNECT_TIMEOUT_S)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    raise AssertionError(f"connected with {dsn}")


async def _pg_ssl(dsn: str) -> tuple[bool, str | None]:
    """(ssl, client_dn) of a session opened with `dsn`, as the server sees it."""
    conn = await asyncpg.connect(dsn, timeout=_CONNECT_TIMEOUT_S)
    try:
        row = await conn.fetchrow("SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await conn.close()
    assert row is not None
    return row["ssl"], row["client_dn"]


# -- (a) every role over TLS to both servers ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _tls_database(cluster: TlsPgCluster) -> AsyncIterator[str]:
    """A database name of the test's own in the TLS cluster (not created: `taskmill migrate` does it), dropped
    afterwards."""
    name = f"tmtls_{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        await cluster.drop_database(name)


async def _stop(roles: list[asyncio.subprocess.Process]) -> str:
    """Stops the role processes (SIGTERM) and returns what they wrote on stderr."""
    for role in roles:
        with contextlib.suppress(ProcessLookupError):
            role.terminate()
    said = []
    for role in roles:
        _, err = await asyncio.wait_for(role.communicate(), 30)
        said.append(f"--- pid {role.pid}, exit {role.returncode}:\n{err.decode(errors='replace')[-3000:]}")
    return "\n".join(said)


@pytest.mark.slow
async def test_roles_over_mutual_tls_to_both_servers_migrate_and_run_a_task(
    tls_pg: TlsPgCluster, tls_rabbit: TlsRabbitNode, tls_files: TlsFiles
) -> None:
    async with _tls_database(tls_pg) as dbname:
        dsn = tls_pg.mutual_dsn(dbname)
        assert "sslmode=verify-full" in dsn and "sslcert=" in dsn and "sslkey=" in dsn
        # Creates the database through the `postgres` database, the certificate parameters kept, then migrates it.
        migrated = await asyncio.to_thread(taskmill, "migrate", DATABASE_URL=dsn)
        assert migrated.returncode == 0, migrated.stderr
        assert "created database" in migrated.stderr and "0001_schema.sql" in migrated.stdout, migrated

        settings = Settings(
            database_url=dsn,
            amqp_url=tls_rabbit.url,
            broker_prefix=f"tmtls.{uuid.uuid4().hex[:6]}",
            command_isolation="none",
            rescue_interval_s=0.5,
        )
        env = tls_files.amqp_env() | {"TASKMILL_LOG_LEVEL": "WARNING"}
        roles = [
            await start_role_process(settings, "distributor", **env),
            await start_role_process(settings, "processor", "--concurrency", "2", **env),
        ]
        db = await db_connect(dsn)
        try:
            task = await create_task(
                db, TaskCreate(name="over-tls", type="noop", payload={"over": "tls"}, schedule=Schedule())
            )

            async def finished() -> bool:
                assert all(role.returncode is None for role in roles), "a role exited"
                status: str | None = await db.fetchval(
                    "SELECT status::text FROM task_schedule WHERE task_id = $1", task.id
                )
                return status in ("succeeded", "failed", "dead")

            try:
                await wait_until(finished, 60, interval=0.1, what="the run over TLS to finish")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{await _stop(roles)}") from None
            row = await db.fetchrow(
                "SELECT s.status::text AS status, r.result FROM task_schedule s JOIN task_results r ON r.run_id = s.id "
                "WHERE s.task_id = $1",
                task.id,
            )
            assert row is not None
            assert (row["status"], row["result"]) == ("succeeded", {"over": "tls"})

            # Every session on the database, the roles' pools and LISTEN connections and ours, is TLS with the
            # client certificate (the cluster would refuse anything else; this shows what it let in).
            sessions = await db.fetch(
                "SELECT a.application_name, s.ssl, s.client_dn FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
                "WHERE a.datname = current_database() AND a.backend_type = 'client backend'"
            )
            assert len(sessions) >= 4, sessions  # ours, the distributor's pool and LISTEN, the processor's pool
            assert {(r["ssl"], r["client_dn"]) for r in sessions} == {(True, f"/CN={TLS_USER}")}

            # And both roles' broker connections are TLS, showing the client certificate.
            listed = await tls_rabbit.ctl("list_connections", "--no-table-headers", "client_properties", "ssl",
                                          "peer_cert_subject")  # fmt: skip
            by_role = {
                role: line.split("\t")[1:]
                for line in listed.splitlines()
                for role in ("taskmill-distributor", "taskmill-processor")
                if f'"{role}"' in line
            }
            assert by_role == {
                "taskmill-distributor": ["true", f"CN={TLS_USER}"],
                "taskmill-processor": ["true", f"CN={TLS_USER}"],
            }, listed
        finally:
            await db.close()
            await _stop(roles)


# -- (b) plaintext refused ------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_plaintext_is_refused_by_both_servers(
    tls_pg: TlsPgCluster, tls_rabbit: TlsRabbitNode, tls_files: TlsFiles
) -> None:
    t = tls_files
    refused = await _pg_refuses(tls_pg.dsn("postgres", user="postgres", sslmode="disable"))
    assert "InvalidAuthorizationSpecificationError" in refused and "no encryption" in refused, refused
    # The same user and database over TLS is let in: it is the plaintext that was refused.
    assert await _pg_ssl(tls_pg.dsn("postgres", user="postgres", sslmode="verify-full", sslrootcert=t.ca)) == (
        True,
        None,
    )

    plain = tls_rabbit.url_at("127.0.0.1", scheme="amqp")
    # The node's TLS listener takes the AMQP header ("AMQP", 65 is "A") for a TLS record of an unknown type.
    async with _logs_anew(tls_rabbit, "unsupported_record_type,65"):
        refused = await _broker_refuses(_broker_settings(tls_rabbit, plain))
    assert "AMQPConnectionError" in refused, refused
    # amqps:// to the same port, with the certificate the node wants, is let in.
    await _broker_answers(_broker_settings(tls_rabbit, ca=t.ca, cert=t.client_cert, key=t.client_key))


# -- (c) mutual TLS required ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_client_without_a_certificate_of_the_ca_is_refused_by_both_servers(
    tls_pg: TlsPgCluster, tls_rabbit: TlsRabbitNode, tls_files: TlsFiles
) -> None:
    t = tls_files
    # TLS, the server verified, but no client certificate: refused by pg_hba's `cert` line for this user.
    refused = await _pg_refuses(tls_pg.dsn("postgres", sslmode="verify-full", sslrootcert=t.ca))
    assert "connection requires a valid client certificate" in refused, refused
    # A certificate for the same name from another CA: the server ends the handshake.
    foreign = tls_pg.dsn(
        "postgres", sslmode="verify-full", sslrootcert=t.ca, sslcert=t.stranger_cert, sslkey=t.stranger_key
    )
    async with _logs_anew(tls_pg, "could not accept SSL connection: certificate verify failed"):
        refused = await _pg_refuses(foreign)
    assert "ConnectionDoesNotExistError" in refused or "SSL" in refused, refused
    # With the CA's certificate, the same user is let in, and the server saw the certificate.
    assert await _pg_ssl(tls_pg.mutual_dsn("postgres")) == (True, f"/CN={TLS_USER}")

    # The client hears of it as the alert or as a reset connection, whichever comes first: the node's log says why.
    async with _logs_anew(tls_rabbit, "generated SERVER ALERT: Fatal - Certificate required"):
        refused = await _broker_refuses(_broker_settings(tls_rabbit, ca=t.ca))
    assert "AMQPConnectionError" in refused, refused
    stranger = _broker_settings(tls_rabbit, ca=t.ca, cert=t.stranger_cert, key=t.stranger_key)
    async with _logs_anew(tls_rabbit, "generated SERVER ALERT: Fatal - Unknown CA"):
        refused = await _broker_refuses(stranger)
    assert "AMQPConnectionError" in refused, refused
    await _broker_answers(_broker_settings(tls_rabbit, ca=t.ca, cert=t.client_cert, key=t.client_key))


# -- (d) the server is verified -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_verify_full_refuses_a_server_certificate_of_another_ca_or_for_another_name(
    tls_pg: TlsPgCluster, tls_rabbit: TlsRabbitNode, tls_files: TlsFiles
) -> None:
    t = tls_files
    cert, key = t.client_cert, t.client_key
    # Another CA (of the same name: only the signature differs).
    refused = await _pg_refuses(
        tls_pg.dsn("postgres", sslmode="verify-full", sslrootcert=t.other_ca, sslcert=cert, sslkey=key)
    )
    assert "CERTIFICATE_VERIFY_FAILED" in refused, refused
    # The right CA, but an address the certificate does not name (127.0.0.2 is the same server).
    refused = await _pg_refuses(
        tls_pg.dsn("postgres", host="127.0.0.2", sslmode="verify-full", sslrootcert=t.ca, sslcert=cert, sslkey=key)
    )
    assert "CERTIFICATE_VERIFY_FAILED" in refused and "127.0.0.2" in refused, refused
    # verify-ca does not check the name: the same connection goes through, so the name is what verify-full refused.
    verify_ca = tls_pg.dsn(
        "postgres", host="127.0.0.2", sslmode="verify-ca", sslrootcert=t.ca, sslcert=cert, sslkey=key
    )
    assert await _pg_ssl(verify_ca) == (True, f"/CN={TLS_USER}")

    refused = await _broker_refuses(_broker_settings(tls_rabbit, ca=t.other_ca, cert=cert, key=key))
    assert "CERTIFICATE_VERIFY_FAILED" in refused, refused
    # No CA file: the system's CAs, which do not know the session's.
    refused = await _broker_refuses(_broker_settings(tls_rabbit, cert=cert, key=key))
    assert "CERTIFICATE_VERIFY_FAILED" in refused, refused
    refused = await _broker_refuses(
        _broker_settings(tls_rabbit, tls_rabbit.url_at("127.0.0.2"), ca=t.ca, cert=cert, key=key)
    )
    assert "CERTIFICATE_VERIFY_FAILED" in refused and "127.0.0.2" in refused, refused
    # Same node, same port, its own name: let in.
    await _broker_answers(_broker_settings(tls_rabbit, ca=t.ca, cert=cert, key=key))


# -- (e) TLS settings that cannot work stop the role with one line --------------------------------------------

_AMQPS = "amqps://guest:guest@127.0.0.1:5671/"  # never reached: every case stops before connecting


def _bad_settings(t: TlsFiles) -> list[tuple[dict[str, str], str]]:
    missing = t.dir / "no-such-ca.pem"
    return [
        (
            {"AMQP_URL": _AMQPS, "TASKMILL_AMQP_CERT_FILE": str(t.client_cert)},
            "TASKMILL_AMQP_CERT_FILE is set without TASKMILL_AMQP_KEY_FILE: mutual TLS takes the certificate and "
            "its key",
        ),
        (
            {"AMQP_URL": _AMQPS, "TASKMILL_AMQP_KEY_FILE": str(t.client_key)},
            "TASKMILL_AMQP_KEY_FILE is set without TASKMILL_AMQP_CERT_FILE: mutual TLS takes the certificate and "
            "its key",
        ),
        (
            {"AMQP_URL": _AMQPS, "TASKMILL_AMQP_CA_FILE": str(missing)},
            f"TASKMILL_AMQP_CA_FILE: cannot read {missing}: No such file or directory",
        ),
        (
            {"AMQP_URL": _AMQPS, "TASKMILL_AMQP_CERT_FILE": str(t.dir), "TASKMILL_AMQP_KEY_FILE": str(t.client_key)},
            f"TASKMILL_AMQP_CERT_FILE: cannot read {t.dir}: Is a directory",
        ),
        (
            {"AMQP_URL": _AMQPS, "TASKMILL_AMQP_CA_FILE": str(t.client_key)},
            f"TASKMILL_AMQP_CA_FILE: no CA certificate in {t.client_key}: NO_CERTIFICATE_OR_CRL_FOUND",
        ),
        (
            {
                "AMQP_URL": _AMQPS,
                "TASKMILL_AMQP_CERT_FILE": str(t.client_cert),
                "TASKMILL_AMQP_KEY_FILE": str(t.stranger_key),
            },
            f"TASKMILL_AMQP_KEY_FILE: {t.stranger_key} is not the key of TASKMILL_AMQP_CERT_FILE {t.client_cert}",
        ),
        (
            {"AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/", "TASKMILL_AMQP_CA_FILE": str(t.ca)},
            "TASKMILL_AMQP_CA_FILE set for a plain amqp:// AMQP_URL: use amqps:// for TLS",
        ),
        (
            {"AMQP_URL": _AMQPS + f"?cafile={t.ca}"},
            "AMQP_URL: cafile in the URL is not read: set TASKMILL_AMQP_CA_FILE, TASKMILL_AMQP_CERT_FILE and "
            "TASKMILL_AMQP_KEY_FILE instead",
        ),
    ]


async def test_tls_settings_that_cannot_work_stop_the_processor_with_one_line(
    settings: Settings, tls_files: TlsFiles, tmp_path: Path
) -> None:
    # On the shared cluster's migrated database of the test (the processor opens its pool before the broker).
    base = {"DATABASE_URL": settings.database_url, "TASKMILL_LOG_LEVEL": "ERROR"}
    # The client's key under a passphrase: OpenSSL would ask for it on the terminal, taskmill refuses it instead.
    locked = tmp_path / "client-locked.key"
    key = serialization.load_pem_private_key(tls_files.client_key.read_bytes(), password=None)
    locked.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.BestAvailableEncryption(b"passphrase"))
    )  # fmt: skip
    cases = [
        *_bad_settings(tls_files),
        (
            {"AMQP_URL": _AMQPS, "TASKMILL_AMQP_CERT_FILE": str(tls_files.client_cert),
             "TASKMILL_AMQP_KEY_FILE": str(locked)},
            f"TASKMILL_AMQP_KEY_FILE: {locked} is encrypted: give the key unencrypted",
        ),
    ]  # fmt: skip
    results = await asyncio.gather(*(asyncio.to_thread(taskmill, "processor", **(base | env)) for env, _ in cases))
    for (env, line), result in zip(cases, results, strict=True):
        assert "Traceback" not in result.stderr, (env, result.stderr)
        assert (result.returncode, result.stderr.splitlines()) == (2, [f"taskmill processor: {line}"]), env


@pytest.mark.parametrize("role", ["distributor", "api"])
async def test_a_certificate_without_its_key_stops_the_other_broker_roles_too(
    settings: Settings, tls_files: TlsFiles, role: str
) -> None:
    env = {
        "DATABASE_URL": settings.database_url,
        "TASKMILL_LOG_LEVEL": "ERROR",
        "JWT_SECRET": "s" * 32,
        "AMQP_URL": _AMQPS,
        "TASKMILL_AMQP_CERT_FILE": str(tls_files.client_cert),
    }
    if role == "api":
        env["TASKMILL_API_PORT"] = "0"
    result = await asyncio.to_thread(taskmill, role, **env)
    line = "TASKMILL_AMQP_CERT_FILE is set without TASKMILL_AMQP_KEY_FILE: mutual TLS takes the certificate and its key"
    assert (result.returncode, result.stderr.splitlines()) == (2, [f"taskmill {role}: {line}"]), result.stderr


def test_a_plain_url_without_tls_settings_gets_no_tls_context() -> None:
    from taskmill.tls import tls_context

    assert tls_context(Settings(amqp_url="amqp://guest:guest@127.0.0.1:5672/")) is None
    context = tls_context(Settings(amqp_url=_AMQPS))
    assert context is not None  # the system's CAs, the host name checked
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)

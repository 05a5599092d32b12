"""TLS to the broker: the context an amqps:// AMQP_URL connects with, from TASKMILL_AMQP_CA_FILE, _CERT_FILE and
_KEY_FILE (mutual TLS). PostgreSQL needs nothing here: DATABASE_URL carries sslmode, sslrootcert, sslcert and
sslkey, which asyncpg reads."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import NoReturn
from urllib.parse import parse_qs, urlsplit

from taskmill.settings import ConfigError, Settings

# aiormq reads these from an amqps:// URL, but only when it is given no context of its own: taskmill always gives
# one, so they would be ignored without a word. They are refused instead, naming the settings that replace them.
_URL_TLS_PARAMETERS = ("cafile", "capath", "cadata", "certfile", "keyfile", "no_verify_ssl")


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of an amqps:// AMQP_URL, None for amqp://.

    The broker's certificate is verified, its host name included, against `amqp_ca_file`, or the system's CAs when
    that is empty; `amqp_cert_file` and `amqp_key_file` are this client's certificate and key for mutual TLS. A
    setting that cannot work (a certificate without its key, a file that cannot be read or holds no certificate,
    TLS files with a plain amqp:// URL) raises ConfigError naming it: the process stops with that one line.
    """
    files = {
        "TASKMILL_AMQP_CA_FILE": settings.amqp_ca_file,
        "TASKMILL_AMQP_CERT_FILE": settings.amqp_cert_file,
        "TASKMILL_AMQP_KEY_FILE": settings.amqp_key_file,
    }
    given = [name for name, path in files.items() if path]
    url = urlsplit(settings.amqp_url)
    if url.scheme != "amqps":
        if given:
            raise ConfigError(f"{', '.join(given)} set for a plain amqp:// AMQP_URL: use amqps:// for TLS")
        return None
    if in_url := [p for p in _URL_TLS_PARAMETERS if p in parse_qs(url.query, keep_blank_values=True)]:
        raise ConfigError(
            f"AMQP_URL: {', '.join(in_url)} in the URL is not read: set TASKMILL_AMQP_CA_FILE, "
            "TASKMILL_AMQP_CERT_FILE and TASKMILL_AMQP_KEY_FILE instead"
        )
    ca, cert, key = settings.amqp_ca_file, settings.amqp_cert_file, settings.amqp_key_file
    if bool(cert) != bool(key):
        have, lack = "TASKMILL_AMQP_CERT_FILE", "TASKMILL_AMQP_KEY_FILE"
        if key:
            have, lack = lack, have
        raise ConfigError(f"{have} is set without {lack}: mutual TLS takes the certificate and its key")
    for name in given:
        _readable(name, files[name])
    try:
        # Verifies the certificate chain and the host name (check_hostname), TLS 1.2 at least.
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca or None)
    except ssl.SSLError as exc:
        raise ConfigError(f"TASKMILL_AMQP_CA_FILE: no CA certificate in {ca}: {exc.reason or exc}") from None
    if cert:

        def encrypted() -> NoReturn:  # called only for a key that needs a passphrase, which nothing could type
            raise ConfigError(f"TASKMILL_AMQP_KEY_FILE: {key} is encrypted: give the key unencrypted")

        try:
            context.load_cert_chain(cert, key, password=encrypted)
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise ConfigError(
                    f"TASKMILL_AMQP_KEY_FILE: {key} is not the key of TASKMILL_AMQP_CERT_FILE {cert}"
                ) from None
            raise ConfigError(
                f"TASKMILL_AMQP_CERT_FILE, TASKMILL_AMQP_KEY_FILE: no certificate and key in {cert} and {key}: "
                f"{exc.reason or exc}"
            ) from None
    return context


def _readable(name: str, path: str) -> None:
    try:
        Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror or exc}") from None

"""
TLS on every listener (SPEC 6.1): the certificate and key named by
C{TLS_CERT_FILE} and C{TLS_KEY_FILE}, checked when the server starts.

Each listener's factory is wrapped in Twisted's TLSMemoryBIOFactory, the
same wrapper Twisted's C{ssl:} endpoints use, so TLS works over whatever
endpoint description the listener has (C{tcp:}, C{unix:}, systemd...).
TLS 1.2 is the oldest version offered; older clients fail the handshake.
A plain HTTP request on such a listener gets a plain-HTTP 400 that says to
use https (L{PlainHTTPAnswer}).

Every problem with the files is a L{TLSError} whose message is one line
naming the setting and the file, never their contents.
"""

import dataclasses
import datetime
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.protocols.tls import TLSMemoryBIOFactory

from .guard import HTTP_1_1
from .plainhttp import PlainHTTPAnswer

MINIMUM_VERSION = TLSVersion.TLSv1_2


class TLSError(Exception):
    """
    The certificate or key cannot be used; C{str(error)} is one line.
    """


@dataclasses.dataclass(frozen=True)
class TLS:
    """
    A checked certificate and key, ready to wrap listeners.

    @ivar options: Twisted's context factory for the server side.
    @ivar cert_file: where the certificate came from, for the log.
    @ivar subject: the certificate's subject, for the log.
    @ivar not_after: when the certificate expires (UTC).
    """

    options: CertificateOptions
    cert_file: str
    subject: str
    not_after: datetime.datetime

    @classmethod
    def from_settings(cls, settings) -> Optional["TLS"]:
        """
        TLS from C{TLS_CERT_FILE} and C{TLS_KEY_FILE}, or C{None} when
        neither is set.

        @raise TLSError: only one is set, or the files cannot be used.
        """
        cert_file, key_file = settings.TLS_CERT_FILE, settings.TLS_KEY_FILE
        if cert_file is None and key_file is None:
            return None
        if cert_file is None or key_file is None:
            given, missing = ("TLS_CERT_FILE", "TLS_KEY_FILE") if key_file is None else ("TLS_KEY_FILE", "TLS_CERT_FILE")
            raise TLSError(f"{given} is set but {missing} is not: set both for TLS, or neither")
        return load(cert_file, key_file)

    def wrap(self, factory, clock=None) -> PlainHTTPAnswer:
        """
        C{factory} with TLS in front of it, and in front of TLS the answer
        to plain HTTP requests (C{clock}, the reactor when C{None}, paces
        their log lines).
        """
        return PlainHTTPAnswer(TLSMemoryBIOFactory(self.options, False, factory), clock)


def _read(setting: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSError(f"{setting}: cannot read {path}: {e.strerror or e}") from None


def load(cert_file: str, key_file: str) -> TLS:
    """
    Read and check a PEM certificate (with its chain, as in Let's Encrypt's
    C{fullchain.pem}) and its unencrypted PEM private key.

    @raise TLSError: a file is missing or unreadable, holds no certificate
        or no usable key, or the key does not match the certificate.
    """
    cert_pem, key_pem = _read("TLS_CERT_FILE", cert_file), _read("TLS_KEY_FILE", key_file)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TLSError(f"TLS_CERT_FILE: {cert_file} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TLSError(f"TLS_KEY_FILE: {key_file} is encrypted; give the key without a passphrase") from None
    except (ValueError, crypto.Error):
        raise TLSError(f"TLS_KEY_FILE: {key_file} holds no PEM private key") from None
    except Exception as e:  # e.g. UnsupportedAlgorithm
        raise TLSError(f"TLS_KEY_FILE: {key_file} cannot be used: {type(e).__name__}") from None
    certificate = chain[0]
    if _public(key.public_key()) != _public(certificate.public_key()):
        raise TLSError(f"TLS_KEY_FILE: {key_file} does not match the certificate in {cert_file}")
    try:
        options = CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(key),
            certificate=crypto.X509.from_cryptography(certificate),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
            raiseMinimumTo=MINIMUM_VERSION,
            # ALPN: every listener speaks HTTP/1.1 (WebSocket handshakes
            # included).  Named here because Twisted aborts the handshake
            # of a client that offers ALPN when no protocol is named (the
            # WebSocket factories name none).
            acceptableProtocols=[HTTP_1_1],
        )
        # Build the OpenSSL context now, so that whatever OpenSSL refuses
        # (a key too weak for its security level...) stops the start.
        options.getContext()
    except Exception as e:
        raise TLSError(f"TLS_CERT_FILE {cert_file} and TLS_KEY_FILE {key_file} refused by OpenSSL: {_reason(e)}") from None
    return TLS(options, cert_file, certificate.subject.rfc4514_string(), certificate.not_valid_after_utc)


def _public(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _reason(error: Exception) -> str:
    # OpenSSL errors are lists of (library, function, reason) tuples.
    details = getattr(error, "args", None)
    if details and isinstance(details[0], list) and details[0] and isinstance(details[0][-1], tuple):
        return str(details[0][-1][-1])
    return str(error) or type(error).__name__

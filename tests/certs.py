"""
Self-signed certificates made inside the tests with cryptography, and
client contexts that trust them.
"""

import datetime
import ipaddress
import os
import ssl
import warnings

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key, password: bytes = None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def self_signed(directory: str, name: str = "localhost", days: int = 1):
    """
    Write a self-signed certificate for C{name}, 127.0.0.1 and ::1, and its
    key, into C{directory}.

    @return: C{(cert_path, key_path)}.
    """
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(name),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(_key_pem(key))
    return cert_path, key_path


def other_key(directory: str, password: bytes = None) -> str:
    """
    Write a fresh key (matching no certificate), encrypted with C{password}
    if given.

    @return: its path.
    """
    path = os.path.join(directory, "other-key.pem" if password is None else "encrypted-key.pem")
    with open(path, "wb") as f:
        f.write(_key_pem(_key(), password))
    return path


def client_context(cert_path: str) -> ssl.SSLContext:
    """
    A client context that trusts only the certificate at C{cert_path}.
    """
    return ssl.create_default_context(cafile=cert_path)


def old_client_context(cert_path: str, maximum=None) -> ssl.SSLContext:
    """
    A client context that offers TLS 1.0 and 1.1 at most (or up to
    C{maximum}), at OpenSSL's security level 0 so that the client itself
    does not refuse to offer them: any refusal is the server's.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cert_path)
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = maximum or ssl.TLSVersion.TLSv1_1
    return context

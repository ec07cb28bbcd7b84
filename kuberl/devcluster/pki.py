"""Certificates and keys for a loopback control plane: one CA, the apiserver's serving certificate,
an admin client certificate (group ``system:masters``) and the service-account signing key pair.

Everything is generated fresh per cluster, so nothing secret outlives the cluster's temporary
directory.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=7)  # a dev cluster lives minutes; a week covers long debugging


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files the control-plane components and the kubeconfig read."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_public: Path
    sa_private: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())  # fast to generate, accepted by every component


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _issue(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
           issuer_key: ec.EllipticCurvePrivateKey, now: dt.datetime, *, ca: bool = False,
           usages: list[x509.ObjectIdentifier] | None = None,
           sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + _VALIDITY)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                          crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def pki_paths(directory: Path) -> Pki:
    """Where ``write_pki`` puts (or put) each file under ``directory``."""
    return Pki(*(directory / n for n in ("ca.crt", "ca.key", "apiserver.crt", "apiserver.key",
                                         "admin.crt", "admin.key", "sa.pub", "sa.key")))


def write_pki(directory: Path, now: dt.datetime | None = None) -> Pki:
    """Create all PEM files under ``directory`` and return their paths."""
    now = now or dt.datetime.now(dt.UTC)
    directory.mkdir(parents=True, exist_ok=True)
    pki = pki_paths(directory)

    ca_key = _key()
    ca_name = _name("kuberl-dev-ca")
    ca = _issue(ca_name, ca_key, ca_name, ca_key, now, ca=True)
    _write_key(pki.ca_key, ca_key)
    pki.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    serving_key = _key()
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"), x509.DNSName("kubernetes"), x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),  # first IP of --service-cluster-ip-range
    ]
    serving = _issue(_name("kube-apiserver"), serving_key, ca_name, ca_key, now,
                     usages=[ExtendedKeyUsageOID.SERVER_AUTH], sans=sans)
    _write_key(pki.serving_key, serving_key)
    pki.serving_cert.write_bytes(serving.public_bytes(serialization.Encoding.PEM))

    admin_key = _key()
    admin = _issue(_name("kuberl-admin", "system:masters"), admin_key, ca_name, ca_key, now,
                   usages=[ExtendedKeyUsageOID.CLIENT_AUTH])
    _write_key(pki.admin_key, admin_key)
    pki.admin_cert.write_bytes(admin.public_bytes(serialization.Encoding.PEM))

    sa_key = _key()
    _write_key(pki.sa_private, sa_key)
    pki.sa_public.write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pki


def kubeconfig_yaml(server: str, pki: Pki, name: str = "kuberl-dev") -> str:
    """A kubeconfig for the admin client certificate; file paths, not inlined data, so it stays
    readable."""
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: {name}\n  cluster:\n    server: {server}\n"
        f"    certificate-authority: {pki.ca_cert}\n"
        f"users:\n- name: {name}-admin\n  user:\n    client-certificate: {pki.admin_cert}\n"
        f"    client-key: {pki.admin_key}\n"
        f"contexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}-admin\n"
        f"current-context: {name}\n"
    )


def issue_serving_cert(pki: Pki, cert_path: Path, key_path: Path, common_name: str,
                       ips: tuple[str, ...] = ("127.0.0.1",), dns: tuple[str, ...] = ("localhost",),
                       now: dt.datetime | None = None) -> None:
    """Sign a serving certificate with the cluster's CA (for a webhook the apiserver calls by URL,
    e.g. Kueue's on 127.0.0.1), so the webhook configurations' caBundle is simply ``ca.crt``."""
    now = now or dt.datetime.now(dt.UTC)
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _key()
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = _issue(_name(common_name), key, ca.subject, ca_key, now,
                  usages=[ExtendedKeyUsageOID.SERVER_AUTH], sans=sans)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

"""The generated PKI is what the components expect: a CA that signed both certificates, an apiserver
certificate valid for loopback, and an admin client certificate in group ``system:masters``."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kuberl.devcluster.pki import kubeconfig_yaml, write_pki


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes,
                   ec.ECDSA(cert.signature_hash_algorithm))
    except Exception:
        return False
    return True


def test_certificates_chain_to_the_ca_with_the_right_identities(tmp_path: Path) -> None:
    pki = write_pki(tmp_path)
    ca, serving, admin = _cert(pki.ca_cert), _cert(pki.serving_cert), _cert(pki.admin_cert)
    assert _signed_by(serving, ca) and _signed_by(admin, ca)
    assert not _signed_by(ca, serving)

    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert ExtendedKeyUsageOID.SERVER_AUTH in serving.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value

    orgs = [a.value for a in admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == ["system:masters"]
    assert pki.admin_key.stat().st_mode & 0o077 == 0, "private keys must not be world-readable"


def test_kubeconfig_points_at_the_server_with_the_admin_certificate(tmp_path: Path) -> None:
    pki = write_pki(tmp_path)
    config = yaml.safe_load(kubeconfig_yaml("https://127.0.0.1:6443", pki))
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert config["users"][0]["user"]["client-certificate"] == str(pki.admin_cert)
    assert config["current-context"] == config["contexts"][0]["name"]

"""The `mail:` section of the service's config.yml: what it says when right, and a message
naming the field when a value is wrong; the password is never in it, only in a file that the
service alone reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pulih.mail import address_problem
from pulih.requests import BadRequestInput, load_config


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "smtp-password"
    path.write_text("rahasia\n")
    path.chmod(0o600)
    return path


def config(tmp_path: Path, **mail: Any) -> Path:
    section = {
        "smtp_host": "smtp.diskominfo.example.go.id",
        "from": "pulih <pulih@diskominfo.example.go.id>",
        "base_url": "https://pulih.diskominfo.example.go.id/",
        **mail,
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"approval_validity_hours": 24, "mail": section}))
    return path


def test_a_section_with_its_defaults(tmp_path):
    settings = load_config(config(tmp_path)).mail
    assert settings is not None
    assert (settings.smtp_port, settings.security, settings.lang) == (587, "starttls", "id")
    assert settings.sender == "pulih <pulih@diskominfo.example.go.id>"
    assert (
        settings.link("PPD-2026-0001") == "https://pulih.diskominfo.example.go.id/desk/requests/PPD-2026-0001"
    )
    assert (settings.user, settings.password_file, settings.escalation) == (None, None, ())
    assert load_config(tmp_path / "none.yml").mail is None
    (tmp_path / "plain.yml").write_text("approval_validity_hours: 24\n")
    assert load_config(tmp_path / "plain.yml").mail is None


def test_a_login_reads_its_password_from_the_file_and_shows_it_nowhere(tmp_path, secret):
    settings = load_config(
        config(tmp_path, security="ssl", user="pulih", password_file=str(secret), escalation=["kasubkor"])
    ).mail
    assert settings is not None and settings.smtp_port == 465
    assert settings.password() == "rahasia"
    assert "rahasia" not in repr(settings) and "rahasia" not in str(settings.summary())
    assert "password_file" not in settings.summary()


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"smtp_host": None}, "smtp_host", "missing"),
        ({"smtp_host": "smtp host"}, "smtp_host", "not a host name"),
        ({"security": "tls"}, "security", "one of starttls, ssl, none"),
        ({"smtp_port": 70000}, "smtp_port", "not a port"),
        ({"smtp_port": "587"}, "smtp_port", "not a port"),
        ({"user": "pulih"}, "password_file", "go together"),
        ({"from": "pulih"}, "from", "is not an address"),
        ({"from": "pulih@localhost"}, "from", "is not an address like"),
        ({"base_url": "ftp://pulih.example.go.id"}, "base_url", "not an http(s) address"),
        ({"base_url": "https://pulih.example.go.id/?x=1"}, "base_url", "not an http(s) address"),
        ({"escalation": "kasubkor"}, "escalation", "a list of account names"),
        ({"escalation": ["Kasubkor!"]}, "escalation", "a list of account names"),
        ({"lang": "fr"}, "lang", "one of id, en"),
        ({"interval_seconds": 0}, "interval_seconds", "not a number from 0.05 to 3600"),
        ({"retry_seconds": 120, "retry_max_seconds": 60}, "retry_max_seconds", "from 120 to"),
        ({"sender": "x"}, "sender", "unknown"),
        ({"password": "rahasia"}, "password", "never written in the config"),
        ({"password_file": "smtp-password", "user": "pulih"}, "password_file", "not an absolute path"),
        ({"password_file": "/nonexistent/smtp-password", "user": "pulih"}, "password_file", "No such file"),
    ],
)
def test_a_wrong_value_is_refused_naming_its_field(tmp_path, fields, field, says):
    with pytest.raises(BadRequestInput, match=rf"config\.yml: field 'mail\.{field}': .*{said(says)}"):
        load_config(config(tmp_path, **fields))


def said(text: str) -> str:
    return text.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")


def test_a_password_file_others_may_read_is_refused(tmp_path, secret):
    secret.chmod(0o640)
    with pytest.raises(
        BadRequestInput, match=r"field 'mail\.password_file': .* has mode 0640: only the service"
    ):
        load_config(config(tmp_path, user="pulih", password_file=str(secret)))


def test_a_password_in_the_clear_goes_only_to_a_server_on_this_machine(tmp_path, secret):
    login = {"user": "pulih", "password_file": str(secret), "security": "none"}
    with pytest.raises(BadRequestInput, match=r"field 'mail\.security': 'none' would send the password"):
        load_config(config(tmp_path, **login))
    assert load_config(config(tmp_path, **login, smtp_host="127.0.0.1")).mail is not None


@pytest.mark.parametrize(
    "address",
    ["ani@bkpsdm.example.go.id", "ani.s+pulih@bkpsdm.example.go.id", "a_b-c@x-y.go.id"],
)
def test_plain_addresses(address):
    assert address_problem(address) is None


@pytest.mark.parametrize(
    "address",
    [
        "ani",
        "ani@go",
        "@x.go.id",
        "ani@x..go.id",
        "ani..s@x.go.id",
        "ani@x.go.id.",
        "ani@x.go.id\n",
        "a\x7f@x.go.id",
    ],
)
def test_not_addresses(address):
    assert address_problem(address) is not None

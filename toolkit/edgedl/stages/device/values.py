"""The values a user types that end up on a device - in a device script's arguments, ``service.env`` (sourced by
sh, read by systemd), a unit file, ``start.sh`` or a template - checked here, once, before anything connects.

Each check allows a small set that cannot mean anything to sh or to systemd: a host is an IP address or an
RFC 1123 host name, a port an integer 1-65535, an API key an RFC 6750 bearer token, a deploy directory letters,
digits, spaces and ``_ . / - + , @ =``. The device side still writes every value quoted (device.sh), so a check
missed here cannot execute anything there; it only makes the error arrive early, on one line.
"""

from __future__ import annotations

import ipaddress
import re

from edgedl.errors import EdgeDLError

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_BEARER = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # RFC 6750 b64token
_DIGITS = re.compile(r"[0-9]{1,5}")
_REMOTE_DIR = re.compile(r"[A-Za-z0-9_./+,@= -]+")
WILDCARD_HOSTS = ("0.0.0.0", "::")


def _shown(value: object) -> str:
    return repr(value)[:80]


def serve_host(value: str, flag: str = "--serve-host") -> str:
    """An address the server may bind: an IPv4/IPv6 address or a host name (letters, digits, '-' and dots)."""
    text = str(value)
    try:
        if "%" not in text:  # an IPv6 zone (fe80::1%eth0) is not an address a service file can hold
            return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text[:-1] if text.endswith(".") else text
    if 0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split(".")):
        return text
    raise EdgeDLError(f"{flag} {_shown(value)} is not an IP address or host name; pass e.g. 0.0.0.0 (every "
                      "interface), 127.0.0.1 (this device only) or the device's own address")


def tcp_port(value: object, flag: str = "--port") -> int:
    """An integer TCP port 1-65535 (an int, or a string of digits as a manifest or inventory may hold it)."""
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and _DIGITS.fullmatch(value))):
        raise EdgeDLError(f"{flag} {_shown(value)} is not a TCP port; use an integer 1-65535")
    port = int(value)
    if not 0 < port < 65536:
        raise EdgeDLError(f"{flag} {port} is not a TCP port; use 1-65535")
    return port


def is_loopback(host: str) -> bool:
    """True when a server bound to ``host`` is reachable from its own machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def remote_dir(value: str) -> str:
    """A deploy directory on the device (relative to the login's home, or absolute)."""
    if not value or not _REMOTE_DIR.fullmatch(value) or value.startswith("-") or value != value.strip():
        raise EdgeDLError(f"--remote-dir {_shown(value)} may hold only letters, digits, spaces and _ . / - + , @ = "
                          "(and not start with '-' or a space); choose another directory name")
    return value


def api_key(value: str) -> str:
    """A bearer token (RFC 6750: letters, digits, ``- . _ ~ + /``, then ``=`` padding), at least 16 characters."""
    key = value.strip()
    if not _BEARER.fullmatch(key) or len(key) < 16:
        raise EdgeDLError("the API key must be 16 or more characters of letters, digits and - . _ ~ + / (a bearer "
                          "token); generate one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return key

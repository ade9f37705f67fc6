"""The egress proxy keys of `defaults:` and of an endpoint, read with the kit.

    proxy_url: http://HOST:PORT        an HTTP CONNECT proxy; false turns a default off
    proxy_username: certwatch          optional Basic credentials; the password only from
    proxy_password_env: PROXY_PASSWORD   an environment variable
    proxy_password_file: /run/secrets/proxy   or a file

Only `http://` proxies: the tunnel carries the endpoint's own TLS end to end, and TLS to
the proxy as well is not supported. Credentials in the URL are refused (they would be
written in the file, and shown wherever the URL is).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from certwatch.config.kit import Reader, describe
from certwatch.core.inventory import Proxy, is_ip
from certwatch.core.names import a_label

__all__ = ["PROXY_KEYS", "read_proxy"]

PROXY_KEYS = ("proxy_url", "proxy_username", "proxy_password_env", "proxy_password_file")
_CREDENTIAL_KEYS = PROXY_KEYS[1:]


def read_proxy(read: Reader, inherited: Proxy | None, addresses: str) -> Proxy | None:
    """The proxy this mapping names (with its credentials), else the inherited one.
    `addresses` is the mapping's address selection, which a proxy cannot honour by
    family: the proxy picks the address."""
    mapping = read.mapping
    if "proxy_url" not in mapping:
        for key in _CREDENTIAL_KEYS:
            if key in mapping:
                read.problem(key, f"'{key}' needs 'proxy_url' beside it")
        proxy = inherited
    elif mapping["proxy_url"] in (False, None, ""):
        for key in _CREDENTIAL_KEYS:
            if key in mapping:
                read.problem(key, f"'{key}' has no proxy to go with ('proxy_url' is off)")
        proxy = None
    else:
        proxy = _read_url(read)
        if proxy is not None:
            proxy = _with_credentials(read, proxy)
    own = "addresses" in mapping or "proxy_url" in mapping  # else reported where inherited
    if proxy is not None and addresses in ("ipv4", "ipv6") and own:
        key = "addresses" if "addresses" in mapping else "proxy_url"
        read.problem(key, f"'addresses: {addresses}' cannot be honoured through a proxy: "
                          "the proxy resolves the name (use all or first)")
    return proxy


def _read_url(read: Reader) -> Proxy | None:
    value = read.mapping["proxy_url"]
    if not isinstance(value, str):
        read.problem("proxy_url", f"'proxy_url' must be http://HOST:PORT or false, "
                                  f"not {describe(value)}")
        return None
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is not None and (parts.username is not None or parts.password is not None):
        # Not quoted: the URL holds a password.
        read.problem("proxy_url", "credentials do not belong in 'proxy_url': use "
                                  "'proxy_username' and 'proxy_password_env' or "
                                  "'proxy_password_file'")
        return None
    if parts is None or parts.scheme.lower() != "http":
        read.problem("proxy_url", f"'proxy_url' must be http://HOST:PORT (an HTTP CONNECT "
                                  f"proxy), not {describe(value)}")
        return None
    if not parts.hostname or port is None or parts.path not in ("", "/") or parts.query:
        read.problem("proxy_url", f"'proxy_url' must be http://HOST:PORT, with the port, "
                                  f"not {describe(value)}")
        return None
    host = parts.hostname
    if not is_ip(host):
        try:
            host = a_label(host)
        except ValueError as exc:
            read.problem("proxy_url", f"'proxy_url' host is {exc}: {describe(host)}")
            return None
    return Proxy(host, port)


def _with_credentials(read: Reader, proxy: Proxy) -> Proxy:
    username = read.string("proxy_username")
    if username is not None and ":" in username:
        read.problem("proxy_username", "'proxy_username' must not contain ':' (Basic "
                                       "credentials are user:password)")
        username = None
    password = read.secret("proxy_password", required=False, what="the proxy password")
    if password is not None and username is None and "proxy_username" not in read.mapping:
        read.problem("proxy_password_env" if "proxy_password_env" in read.mapping
                     else "proxy_password_file", "a proxy password needs 'proxy_username'")
    return Proxy(proxy.host, proxy.port, username, password)

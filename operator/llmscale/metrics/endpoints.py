"""Prometheus endpoints and their credentials, as the platform team configures them.

The threat: anyone who may create an LLMDeployment can write any URL into it. So a credential
belongs to one configured endpoint and goes nowhere else:
- endpoints (URL + bearer token or basic auth from files, CA bundle, TLS verification on) are set
  in the operator's configuration (the chart), each under a name; a CR selects one by name
  (`spec.metrics.prometheus`);
- a CR may name a URL (`spec.metrics.prometheusURL`) only if it is on the allow-list (a configured
  endpoint's URL, or `allowedURLs`), compared by scheme, host, port and path exactly; an allowed
  URL that is not a configured endpoint is read without any credential;
- where the platform team enables it for an endpoint (`namespaceSecret`), each LLMDeployment's
  reads of that endpoint carry the credential of a Secret of that name in the LLMDeployment's own
  namespace (a tenant's own token for a multi-tenant Prometheus, e.g. behind kube-rbac-proxy or
  prom-label-proxy), never another namespace's, and never to a URL a CR wrote;
- redirects are never followed (a 3xx is a failed read), so a credential cannot be bounced on;
- token and password files are re-read when they change (rotation needs no restart);
- what a remote server says never reaches status or Events: a failed read is reported by the
  endpoint's name and an HTTP status code or an error class, never by the response's text.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel
from requests.auth import AuthBase

log = logging.getLogger("llmscale.metrics")

DEFAULT = "default"
CREDENTIAL_KEYS = ("token", "username", "password")  # what a namespace's credential Secret is read for
SECRET_TTL_S = 60.0  # a namespace's credential Secret is read again after this long (rotation)

# Reads a Secret's data (decoded) from the Kubernetes API: (namespace, name) -> data, or None when
# the Secret does not exist. Raises NamespaceCredentialError when it cannot be read.
SecretSource = Callable[[str, str], Mapping[str, str] | None]


class EndpointError(ValueError):
    """An endpoints file that cannot be used (the CLI prints it as one line)."""


class NamespaceCredentialError(ValueError):
    """A namespace's credential Secret that cannot be used; the message is ours, never the API's."""


class _Config(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class BasicAuthFiles(_Config):
    username_file: str
    password_file: str


class Endpoint(_Config):
    """One Prometheus the operator may read, with the credential that belongs to it alone."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    url: str = Field(pattern=r"^https?://", max_length=512)
    bearer_token_file: str | None = None
    basic_auth: BasicAuthFiles | None = None
    ca_file: str | None = None
    insecure_skip_verify: bool = False
    allow_plain_http: bool = Field(
        False, alias="allowPlainHTTP",
        description="Send this endpoint's credential over plain http:// to a host other than the operator's own (a "
                    "path the platform team trusts, such as a mesh with mTLS). Off: such an endpoint is refused at start.")
    timeout_seconds: float = Field(5.0, gt=0, le=60)

    namespaces: tuple[str, ...] | None = Field(
        None, description="Namespaces whose LLMDeployments may select this endpoint; unset: every namespace.")
    namespace_secret: str | None = Field(
        None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Read each LLMDeployment's metrics with the credential in the Secret of this name in its own "
                    "namespace (key `token`, or `username` and `password`), never with another namespace's; the "
                    "operator's own credential files are not used for this endpoint.")

    @property
    def sends_credential(self) -> bool:
        """Reads carry a credential: the operator's files, or each namespace's own Secret."""
        return bool(self.bearer_token_file or self.basic_auth or self.namespace_secret)

    @model_validator(mode="after")
    def _one_credential(self) -> Endpoint:
        if self.namespace_secret and (self.bearer_token_file or self.basic_auth):
            raise ValueError("an endpoint takes its credential from namespaceSecret or from files, not both")
        return self

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        why = plain_url_problem(v)
        if why:
            raise ValueError(f"an endpoint URL {why} (credentials go in the credential files)")
        return v


class EndpointsConfig(_Config):
    """The operator's endpoints file (the chart renders it from prometheus.* values)."""

    endpoints: list[Endpoint] = Field(default_factory=list)
    allowed_urls: list[str] = Field(default_factory=list, alias="allowedURLs")
    allow_query_overrides: bool = False


def plain_http_off_host(url: str) -> bool:
    """An http:// URL to anything but the operator's own host (a sidecar proxy on loopback)."""
    p = urlsplit(url)
    if p.scheme.lower() != "http":
        return False
    host = (p.hostname or "").lower()
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


def _host(url: str) -> str:
    """The host of a URL for a message (never its user or password), or '?' when none can be read."""
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


def plain_url_problem(url: str) -> str | None:
    """Why `url` is not a plain scheme://host[:port][/path], or None. Anything that URL parsers may
    read differently (userinfo, backslashes, whitespace, queries, fragments) is refused, so the
    host an allow-list compares is the host a request goes to."""
    if any(c in url for c in "@\\ \t\r\n") or not url.isprintable():
        return "carries a user, a backslash, whitespace or a control character"
    try:
        p = urlsplit(url)
        p.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return "has an invalid port"
    if p.scheme not in ("http", "https") or not p.hostname:
        return "is not http(s)://host"
    if p.query or p.fragment:
        return "carries a query or a fragment"
    return None


def origin(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of a URL: what an allow-list entry must match exactly."""
    p = urlsplit(url)
    port = p.port or (443 if p.scheme == "https" else 80)
    return p.scheme.lower(), (p.hostname or "").lower(), port, p.path.rstrip("/")


class _FileSecret:
    """A secret read from a file, read again whenever the file changes (rotation without restart)."""

    def __init__(self, path: str):
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._value = ""

    def get(self) -> str:
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._value = Path(self.path).read_text().strip()
            self._stamp = stamp
        return self._value


class _Auth(AuthBase):
    def __init__(self, token: _FileSecret | None, user: _FileSecret | None, password: _FileSecret | None):
        self.token, self.user, self.password = token, user, password

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if self.token is not None:
            r.headers["Authorization"] = f"Bearer {self.token.get()}"
        elif self.user is not None and self.password is not None:
            requests.auth.HTTPBasicAuth(self.user.get(), self.password.get())(r)
        return r


def session_for(endpoint: Endpoint | None, auth: AuthBase | None = None) -> requests.Session:
    """A session that carries `endpoint`'s credential (none for a bare allowed URL; `auth` for a
    namespace's own) and follows no redirect."""
    s = requests.Session()
    s.max_redirects = 0  # a 3xx raises TooManyRedirects: a credential is never sent on
    s.trust_env = False  # no proxy or netrc credentials from the environment
    if endpoint is None:
        return s
    basic = endpoint.basic_auth
    s.auth = auth or _Auth(_FileSecret(endpoint.bearer_token_file) if endpoint.bearer_token_file else None,
                           _FileSecret(basic.username_file) if basic else None,
                           _FileSecret(basic.password_file) if basic else None)
    if endpoint.insecure_skip_verify:
        s.verify = False
    elif endpoint.ca_file:
        s.verify = endpoint.ca_file
    return s


@dataclass(frozen=True)
class Target:
    """Where one deployment's metrics are read: a URL, and the endpoint whose credential it may use."""

    url: str
    endpoint: Endpoint | None  # None: an allowed URL read without credential
    label: str  # how status and Events name it (never the remote server's words)
    namespace: str | None = None  # whose credential Secret the reads carry (namespaceSecret endpoints only)

    @property
    def identity(self) -> tuple[str, str | None, str | None]:
        """Where reads go and with what credential: the URL, the endpoint, the namespace."""
        return self.url, self.endpoint.name if self.endpoint else None, self.namespace

    @property
    def batch(self) -> str:
        """Deployments read in one batch share this: the URL, and for a namespace's own credential
        the namespace (its token may see only its own series)."""
        return self.url if self.namespace is None else f"{self.url} as {self.namespace}"


@dataclass
class Endpoints:
    by_name: dict[str, Endpoint] = field(default_factory=dict)
    allowed: dict[tuple[str, str, int, str], str] = field(default_factory=dict)  # allowedURLs: origin -> URL as configured
    allow_query_overrides: bool = False

    @staticmethod
    def build(default: Endpoint | None, config: EndpointsConfig | None = None) -> Endpoints:
        eps = Endpoints()
        for ep in ([default] if default else []) + (config.endpoints if config else []):
            if ep.name in eps.by_name:
                raise EndpointError(f"Prometheus endpoint {ep.name!r} is configured twice")
            eps.by_name[ep.name] = ep
            if plain_http_off_host(ep.url) and ep.sends_credential:
                # Anyone on the path between the operator and that endpoint could read the credential:
                # refused unless the platform team says the path is trusted, and then said at start.
                if not ep.allow_plain_http:
                    raise EndpointError(f"Prometheus endpoint {ep.name!r} would send its credential over plain "
                                        f"http:// to {urlsplit(ep.url).hostname}; use https://, or set allowPlainHTTP "
                                        f"on it where the network path is trusted")
                log.warning("Prometheus endpoint %r sends its credential over plain http:// (allowPlainHTTP)", ep.name)
            if ep.insecure_skip_verify and ep.sends_credential:
                log.warning("Prometheus endpoint %r sends its credential without checking the server's certificate "
                            "(insecureSkipVerify): whoever can intercept the connection can take it", ep.name)
        if config:
            for i, u in enumerate(config.allowed_urls):
                why = plain_url_problem(u)
                if why:
                    # Not the URL itself: one written with user:password@ would put the password in the log.
                    raise EndpointError(f"allowedURLs entry {i + 1} (host {_host(u)}) {why}")
                eps.allowed.setdefault(origin(u), u)
            eps.allow_query_overrides = config.allow_query_overrides
        return eps

    def resolve(self, name: str | None, url: str | None, namespace: str | None = None) -> Target | str:
        """The target a CR's metrics settings select, or why it may not be read (in our words).
        A request always goes to the URL as the platform team wrote it, never to the CR's string."""
        if name is not None:
            ep = self.by_name.get(name)
            if ep is None or not self._serves(ep, namespace):
                return f"spec.metrics.prometheus {name!r} is not an endpoint configured for this namespace"
            return self._target(ep, namespace)
        if url is not None:
            refused = ("spec.metrics.prometheusURL is not on the operator's allow-list (prometheus.allowedURLs in the "
                       "chart); select a configured endpoint with spec.metrics.prometheus instead")
            if plain_url_problem(url):
                return refused
            want = origin(url)
            for ep in self.by_name.values():
                if origin(ep.url) == want and self._serves(ep, namespace):
                    return self._target(ep, namespace)
            allowed = self.allowed.get(want)
            if allowed is None:
                return refused
            return Target(allowed, None, "the Prometheus at spec.metrics.prometheusURL")
        ep = self.by_name.get(DEFAULT)
        if ep is None or not self._serves(ep, namespace):
            return "no Prometheus configured for this namespace (the chart's prometheus.url, or spec.metrics.prometheus)"
        return self._target(ep, namespace)

    @staticmethod
    def _target(ep: Endpoint, namespace: str | None) -> Target | str:
        if ep.namespace_secret is None:
            return Target(ep.url, ep, f"Prometheus {ep.name!r}")
        if not namespace:
            return f"Prometheus {ep.name!r} is read with a namespace's own credential, and this has no namespace"
        return Target(ep.url, ep, f"Prometheus {ep.name!r}", namespace)

    @staticmethod
    def _serves(ep: Endpoint, namespace: str | None) -> bool:
        return ep.namespaces is None or (namespace is not None and namespace in ep.namespaces)


@dataclass(frozen=True)
class Credential:
    """One namespace's credential for one endpoint, as read from its Secret."""

    token: str | None = field(default=None, repr=False)
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)


def _token_problem(token: str) -> str | None:
    """Why a bearer token cannot go in a header as it is, or None."""
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        return "whose token is not printable ASCII without whitespace"
    return None


def _basic_problem(user: str, password: str) -> str | None:
    """Why a username and password cannot be sent as basic auth, or None (they are base64-encoded:
    spaces are fine; a ':' in the user would be read as the separator)."""
    if not all(v.isascii() and v.isprintable() for v in (user, password)):
        return "whose username or password is not printable ASCII"
    if ":" in user:
        return "whose username contains ':'"
    return None


class NamespaceCredentials:
    """The credentials of namespaceSecret endpoints, one per (namespace, Secret), read through
    `source` and read again after SECRET_TTL_S (a rotated token is used within a minute)."""

    def __init__(self, source: SecretSource | None, clock: Callable[[], float] = time.monotonic):
        self.source, self.clock = source, clock
        self._cache: dict[tuple[str, str], tuple[float, Credential]] = {}

    def get(self, target: Target) -> Credential:
        """The credential `target`'s reads carry. Raises NamespaceCredentialError, in our words."""
        assert target.endpoint is not None and target.endpoint.namespace_secret and target.namespace
        ns, name = target.namespace, target.endpoint.namespace_secret
        hit = self._cache.get((ns, name))
        if hit is not None and self.clock() - hit[0] < SECRET_TTL_S:
            return hit[1]
        if self.source is None:
            raise NamespaceCredentialError(f"{target.label} needs the Secret {name!r} of namespace {ns!r}, and the "
                                           "operator has no Kubernetes API to read it from")
        data = self.source(ns, name)
        if data is None:
            raise NamespaceCredentialError(f"{target.label} is read with the Secret {name!r} of this namespace, which "
                                           "does not exist")
        token = (data.get("token") or "").strip()
        user, password = (data.get("username") or "").strip(), (data.get("password") or "").strip()
        why = _token_problem(token) if token else _basic_problem(user, password) if user and password else None
        if why:
            raise NamespaceCredentialError(f"{target.label} is read with the Secret {name!r} of this namespace, {why}")
        if token:
            cred = Credential(token=token)
        elif user and password:
            cred = Credential(username=user, password=password)
        else:
            raise NamespaceCredentialError(f"{target.label} is read with the Secret {name!r} of this namespace, which "
                                           "has neither a 'token' key nor 'username' and 'password' keys")
        self._cache[(ns, name)] = (self.clock(), cred)
        return cred


class CredentialAuth(AuthBase):
    """A namespace's credential, fetched (cached) at every request: a request never goes out with
    another namespace's, or with none when the Secret went away."""

    def __init__(self, credentials: NamespaceCredentials, target: Target):
        self.credentials, self.target = credentials, target

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        cred = self.credentials.get(self.target)
        if cred.token is not None:
            r.headers["Authorization"] = f"Bearer {cred.token}"
        else:
            requests.auth.HTTPBasicAuth(cred.username or "", cred.password or "")(r)
        return r


def load_config(path: str) -> EndpointsConfig:
    try:
        raw: Any = yaml.safe_load(Path(path).read_text()) or {}
        return EndpointsConfig.model_validate(raw)
    except OSError as e:
        raise EndpointError(f"{path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise EndpointError(f"{path}: not YAML ({str(e).splitlines()[0]})") from None
    except ValidationError as e:
        first = e.errors()[0]
        raise EndpointError(f"{path}: {'.'.join(str(x) for x in first['loc'])}: {first['msg']}") from None


_STATUS = re.compile(r"HTTP Status Code (\d{3})")


def describe_failure(e: BaseException) -> str:
    """A failed read in our words: an HTTP status or the error's class, never the server's text."""
    m = _STATUS.search(str(e))
    if m:
        return f"HTTP {m.group(1)}"
    if isinstance(e, requests.TooManyRedirects):
        return "redirected (redirects are not followed)"
    return type(e).__name__

"""Where a task's image may come from, and reading it with caps: the backend fetches URLs that
tasks hand it, so what it may read is decided here, once, before any byte is read.

- A Label Studio URL (``/data/upload/...``, ``/data/local-files/?d=...``, or an absolute URL on
  ``LABEL_STUDIO_URL``'s host) is fetched from ``LABEL_STUDIO_URL`` with its API key (the key is
  sent to that address only). With ``--local-files DIR`` (Label Studio's
  ``LOCAL_FILES_DOCUMENT_ROOT``), ``/data/local-files/?d=REL`` is read from ``DIR/REL`` instead.
- Any other ``http(s)`` URL only when its host is listed with ``--allow-host``.
- A plain path only under ``--local-files DIR`` (symbolic links resolved first).
- Nothing else: no ``file://`` or other schemes, no redirect to another host, no body larger than
  ``max_bytes``, no image of more than ``max_pixels`` pixels.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from dslo.imageio import ImageReadError

__all__ = ["FetchLimits", "ImagePolicy", "Refused", "Source", "read_source"]


class Refused(ImageReadError):
    """A task's image that the policy does not allow, or that breaks a cap (the task fails; the
    message names the rule, never a local path)."""


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 64 << 20
    max_pixels: int = 64_000_000
    timeout: float = 30.0


@dataclass(frozen=True)
class Source:
    """A checked place to read one image: ``kind`` ``url`` (``location`` an http(s) URL,
    ``label_studio`` (address, API key) when it is signed) or ``file`` (``location`` an absolute
    path inside the local-files root).
    ``shown``: how logs and errors name it (the task's value, never a resolved local path)."""

    kind: str
    location: str
    shown: str
    label_studio: tuple[str, str] | None = field(default=None, repr=False)  # (address, API key): sign with it


def _host(url: str) -> str:
    return (urllib.parse.urlsplit(url).hostname or "").lower()


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, f"{(parts.hostname or '').lower()}:{port}"


@dataclass(frozen=True)
class ImagePolicy:
    """What images the backend may read. ``label_studio_url``: Label Studio's address (its host is
    allowed; its API key goes there only); ``api_key``: a legacy token or a personal access token
    (a JWT refresh token, exchanged at ``/api/token/refresh``); ``allow_hosts``: more hosts whose
    http(s) URLs may be fetched; ``local_files``: the folder plain paths and
    ``/data/local-files/?d=`` may name."""

    label_studio_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    allow_hosts: tuple[str, ...] = ()
    local_files: Path | None = None

    def __post_init__(self) -> None:
        url = self.label_studio_url
        if url is not None:
            url = url.strip().rstrip("/")
            if urllib.parse.urlsplit(url).scheme not in ("http", "https") or not _host(url):
                raise ValueError(f"LABEL_STUDIO_URL must be an http(s) address such as http://localhost:8080; got {url!r}")
            object.__setattr__(self, "label_studio_url", url)
        object.__setattr__(self, "allow_hosts", tuple(h.strip().lower() for h in self.allow_hosts if h.strip()))
        if self.local_files is not None:
            root = Path(self.local_files).expanduser().resolve()
            if not root.is_dir():
                raise ValueError(f"--local-files {self.local_files}: no such folder")
            object.__setattr__(self, "local_files", root)

    @property
    def hosts(self) -> set[str]:
        return set(self.allow_hosts) | ({_host(self.label_studio_url)} if self.label_studio_url else set())

    def resolve(self, value: object) -> Source:
        """The source of a task's image value, or :class:`Refused` saying which rule it breaks."""
        if not isinstance(value, str) or not value.strip():
            raise Refused("the task has no image URL under the config's image key")
        value = value.strip()
        parts = urllib.parse.urlsplit(value)
        scheme = parts.scheme.lower()
        if scheme in ("http", "https"):
            return self._url(value, value)
        if scheme and len(scheme) > 1:  # a Windows drive letter is not a scheme
            raise Refused(f"{scheme}:// URLs are not fetched (only http(s) from Label Studio or --allow-host hosts)")
        if value.startswith("/data/"):
            if value.startswith("/data/local-files/") and self.local_files is not None:
                rel = urllib.parse.parse_qs(parts.query).get("d", [""])[0]
                return self._file(rel, value)
            if self.label_studio_url is None:
                raise Refused(f"{value} is a Label Studio URL: set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY)")
            return self._url(self.label_studio_url + value, value)
        return self._file(value, value)

    def _url(self, url: str, shown: str) -> Source:
        host = _host(url)
        if host not in self.hosts:
            raise Refused(f"{shown}: host {host or '(none)'} is not Label Studio's and not allowed "
                          "(add it with --allow-host HOST)")
        sign = None
        if self.api_key and self.label_studio_url and _origin(url) == _origin(self.label_studio_url):
            sign = (self.label_studio_url, self.api_key)
        return Source("url", url, shown, sign)

    def _file(self, path: str, shown: str) -> Source:
        if self.local_files is None:
            raise Refused(f"{shown}: local paths are read only under --local-files DIR")
        candidate = Path(path)
        full = (candidate if candidate.is_absolute() else self.local_files / candidate).resolve()
        if not full.is_relative_to(self.local_files):
            raise Refused(f"{shown}: outside the --local-files folder")
        return Source("file", str(full), shown)


_ACCESS: dict[tuple[str, str], tuple[float, str]] = {}  # (address, refresh token) -> (expiry, access token)


def _authorization(base: str, key: str) -> str:
    """The Authorization header for Label Studio: ``Token KEY`` for a legacy token; for a personal
    access token (a JWT refresh token) ``Bearer`` + an access token from ``/api/token/refresh``,
    kept for four minutes (Label Studio's access tokens live five)."""
    import time

    if key.count(".") != 2:
        return f"Token {key}"
    now = time.monotonic()
    kept = _ACCESS.get((base, key))
    if kept is None or kept[0] < now:
        kept = (now + 240, _access_token(base, key))
        _ACCESS[(base, key)] = kept
    return f"Bearer {kept[1]}"


def _access_token(base: str, refresh: str) -> str:
    """A personal access token's short-lived access token (Label Studio's JWT refresh)."""
    req = urllib.request.Request(base + "/api/token/refresh", data=json.dumps({"refresh": refresh}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - Label Studio's own address
            return str(json.loads(r.read(1 << 16))["access"])
    except (OSError, ValueError, KeyError) as exc:
        raise Refused(f"Label Studio refused the API key (token refresh failed: {type(exc).__name__})") from None


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Follow at most 3 redirects, and only to http(s) on the same host."""

    max_redirections = 3

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = urllib.parse.urljoin(req.full_url, newurl)
        if urllib.parse.urlsplit(new).scheme not in ("http", "https") or _host(new) != _host(req.full_url):
            raise Refused(f"the server redirected to another host ({_host(new) or new.split(':')[0]}); "
                          "redirects are followed on the same host only")
        return super().redirect_request(req, fp, code, msg, headers, new)


_OPENER = urllib.request.build_opener(_SameHostRedirects)


def _check_pixels(data: bytes, shown: str, max_pixels: int) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels, before decoding."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001 - not an image: the decoder says so, in the step's words
        return
    if w * h > max_pixels:
        raise Refused(f"{shown}: {w}x{h} is more than the {max_pixels:,} pixels allowed (--max-pixels)")


def _read_url(src: Source, limits: FetchLimits) -> bytes:
    headers = {"Authorization": _authorization(*src.label_studio)} if src.label_studio else {}
    req = urllib.request.Request(src.location, headers=headers)
    try:
        with _OPENER.open(req, timeout=limits.timeout) as r:
            declared = r.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limits.max_bytes:
                raise Refused(f"{src.shown}: {int(declared):,} bytes is more than the {limits.max_bytes:,} allowed")
            data = r.read(limits.max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise Refused(f"{src.shown}: the server answered HTTP {exc.code}") from None
    except Refused:
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Refused(f"{src.shown}: cannot fetch it ({type(exc).__name__}: {reason})") from None
    if len(data) > limits.max_bytes:
        raise Refused(f"{src.shown}: more than the {limits.max_bytes:,} bytes allowed")
    return data


def read_source(src: Source, limits: FetchLimits) -> bytes:
    """The image file's bytes, every cap checked (size before reading, pixels before decoding)."""
    if src.kind == "url":
        data = _read_url(src, limits)
    else:
        try:
            size = os.path.getsize(src.location)
            if size > limits.max_bytes:
                raise Refused(f"{src.shown}: {size:,} bytes is more than the {limits.max_bytes:,} allowed")
            data = Path(src.location).read_bytes()
        except OSError as exc:
            raise Refused(f"{src.shown}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    _check_pixels(data, src.shown, limits.max_pixels)
    return data


def basic_auth_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")

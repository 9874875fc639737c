"""Cityscapes' login: its packages are served to registered users only.

Credentials come from ``CITYSCAPES_USERNAME`` / ``CITYSCAPES_PASSWORD`` or a netrc entry for
``www.cityscapes-dataset.com``; without them dslo says which zips to place where. The site's
protocol is the one cityscapesscripts' ``csDownload`` uses: a form login (answered by a redirect),
a JSON list of packages (``/downloads/?list``), each package's md5 (``/md5-sum/?packageID=N``)
and its bytes (``/file-handling/?packageID=N``, which honours HTTP ``Range``).
"""

from __future__ import annotations

import http.cookiejar
import json
import netrc
import os
import urllib.error
import urllib.parse
import urllib.request

from dslo.data.fetch import USER_AGENT, DataError

__all__ = ["SITE", "credentials", "login", "manual_instructions", "package"]

SITE = "https://www.cityscapes-dataset.com"
_HOST = "www.cityscapes-dataset.com"


def credentials() -> tuple[str, str] | None:
    """(username, password) from the environment, else from ~/.netrc (``$NETRC``), else None."""
    user, password = os.environ.get("CITYSCAPES_USERNAME"), os.environ.get("CITYSCAPES_PASSWORD")
    if user and password:
        return user, password
    try:
        entry = netrc.netrc(os.environ.get("NETRC")).authenticators(_HOST)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return None
    if entry and entry[0] and entry[2]:
        return entry[0], entry[2]
    return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - keep the 302 visible
        return None


def login(user: str, password: str) -> urllib.request.OpenerDirector:
    """An opener holding the session cookie; :class:`DataError` on refused credentials."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect())
    opener.addheaders = [("User-Agent", USER_AGENT)]
    try:
        opener.open(f"{SITE}/login", timeout=60).close()
    except urllib.error.HTTPError as exc:
        if exc.code not in (301, 302, 303):
            raise DataError(f"Cityscapes login page: HTTP {exc.code}") from None
    body = urllib.parse.urlencode({"username": user, "password": password, "submit": "Login"}).encode()
    try:
        with opener.open(f"{SITE}/login", data=body, timeout=60):
            ok = False  # 200: the form again, i.e. refused
    except urllib.error.HTTPError as exc:
        ok = exc.code == 302  # what a successful login answers
        if exc.code not in (301, 302, 303):
            raise DataError(f"Cityscapes login: HTTP {exc.code}") from None
    if not ok:
        raise DataError(f"Cityscapes refused the login of {user!r}; check CITYSCAPES_USERNAME / "
                        "CITYSCAPES_PASSWORD (or your netrc entry)")
    return opener


def package(opener: urllib.request.OpenerDirector, name: str) -> tuple[str, str]:
    """(download URL, published md5) of the package called ``name`` (e.g. gtFine_trainvaltest.zip)."""
    with opener.open(f"{SITE}/downloads/?list", timeout=60) as resp:
        packages = json.load(resp)
    ids = {p["name"]: p["packageID"] for p in packages}
    if name not in ids:
        raise DataError(f"Cityscapes offers no package {name!r} to this account")
    with opener.open(f"{SITE}/md5-sum/?packageID={ids[name]}", timeout=60) as resp:
        md5 = resp.read().decode().split()[0].lower()
    return f"{SITE}/file-handling/?packageID={ids[name]}", md5


def manual_instructions(missing: list[str], folder: str) -> str:
    names = " and ".join(missing)
    return (f"Cityscapes needs an account (https://www.cityscapes-dataset.com/register/). Either set "
            f"CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD (or add 'machine {_HOST} login USER password "
            f"PASS' to ~/.netrc) and rerun, or download {names} from "
            f"https://www.cityscapes-dataset.com/downloads/ yourself, place "
            f"{'them' if len(missing) > 1 else 'it'} in {folder}/ and rerun: dslo checks "
            f"{'them' if len(missing) > 1 else 'it'} (zip CRCs) and unpacks into the layout dslo eval reads")

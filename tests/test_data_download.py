"""`dslo data download` against a loopback HTTP server started here (127.0.0.1 only), with small
archives whose own checksums replace the catalogue's (``with_archives``): resume after a cut
connection, a wrong checksum, a truncated file, unsafe members, an unwritable root, a full disk,
Cityscapes without and with a login, and a second run that downloads nothing."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import tarfile
import threading
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dslo.cli import main as cli_main
from dslo.data import ARCHIVES, DataError, download, with_archives
from dslo.data import account as cs_account
from dslo.data.extract import UnsafeArchiveError, extract


class Server:
    """Serves ``files`` (name -> bytes) with HTTP Range; ``cut[name] = n`` sends the full
    Content-Length but only n bytes, once, then drops the connection."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.routes: dict[str, object] = {}  # path -> handler(request) for the fake Cityscapes site
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                self._route()

            def do_GET(self):
                if self._route():
                    return
                name = self.path.lstrip("/")
                outer.requests.append((name, self.headers.get("Range")))
                if name not in outer.files:
                    self.send_error(404)
                    return
                self._send(outer.files[name], name)

            def _route(self):
                handler = outer.routes.get(self.path)
                if handler is None:
                    return False
                handler(self)
                return True

            def _send(self, data, name):
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in outer.cut:
                    self.wfile.write(body[: outer.cut.pop(name)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.handler = Handler
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def _png(h=6, w=8, value=None) -> bytes:
    rng = np.random.default_rng(h * w)
    arr = rng.integers(0, 150, (h, w), dtype=np.uint8) if value is None else np.full((h, w), value, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _ade_zip(n: int = 3) -> bytes:
    """A tiny ADEChallengeData2016.zip: n validation pairs (plus padding so that a cut is mid-file)."""
    members = {}
    for i in range(1, n + 1):
        members[f"ADEChallengeData2016/images/validation/ADE_val_{i:08d}.jpg"] = _jpg()
        members[f"ADEChallengeData2016/annotations/validation/ADE_val_{i:08d}.png"] = _png()
    members["ADEChallengeData2016/padding.bin"] = np.random.default_rng(0).bytes(300_000)
    return _zip(members)


def _serve_ade(server, data: bytes, *, checksum_of: bytes | None = None, size: int | None = None):
    """Serve ``data`` as ADEChallengeData2016.zip and publish the checksum of ``checksum_of``."""
    server.files["ADEChallengeData2016.zip"] = data
    ref = data if checksum_of is None else checksum_of
    entry = replace(ARCHIVES["ADEChallengeData2016.zip"], size=len(ref) if size is None else size,
                    checksum=("sha256", hashlib.sha256(ref).hexdigest()))
    return with_archives({entry.name: entry})


def _quiet(**kw):
    return {"progress": False, "log": lambda m: None, **kw}


def test_download_verifies_unpacks_and_a_second_run_downloads_nothing(server, tmp_path):
    data = _ade_zip()
    with _serve_ade(server, data):
        rep = download(["ade20k"], tmp_path, mirror=server.url, **_quiet())
        assert rep.done == ["ADEChallengeData2016.zip"] and not rep.failed and rep.downloaded_bytes == len(data)
        val = sorted((tmp_path / "ADEChallengeData2016/images/validation").iterdir())
        assert [p.name for p in val] == [f"ADE_val_{i:08d}.jpg" for i in (1, 2, 3)]
        marker = json.loads((tmp_path / "archives/ADEChallengeData2016.zip.done").read_text())
        assert marker["checksum"] == ["sha256", hashlib.sha256(data).hexdigest()] and marker["files"] == 7
        assert server.requests == [("ADEChallengeData2016.zip", None)]
        again = download(["ade20k"], tmp_path, mirror=server.url, **_quiet())
        assert again.skipped == ["ADEChallengeData2016.zip"] and again.downloaded_bytes == 0
        assert len(server.requests) == 1  # nothing fetched, not even a HEAD


def test_a_cut_connection_resumes_with_a_range_request(server, tmp_path):
    data = _ade_zip()
    with _serve_ade(server, data):
        server.cut["ADEChallengeData2016.zip"] = 100_000
        rep = download(["ade20k"], tmp_path, mirror=server.url, **_quiet(retries=0))
        assert "lost after 100000 bytes" in rep.failed["ADEChallengeData2016.zip"]
        part = tmp_path / "archives/ADEChallengeData2016.zip.part"
        assert part.stat().st_size == 100_000
        assert not (tmp_path / "ADEChallengeData2016").exists()  # nothing extracted
        rep = download(["ade20k"], tmp_path, mirror=server.url, **_quiet(retries=0))
        assert rep.done and rep.downloaded_bytes == len(data) - 100_000
        assert server.requests[-1] == ("ADEChallengeData2016.zip", "bytes=100000-")
        assert (tmp_path / "archives/ADEChallengeData2016.zip").read_bytes() == data
    # Within one run: the retry resumes by itself.
    server.requests.clear()
    with _serve_ade(server, data):
        server.cut["ADEChallengeData2016.zip"] = 50_000
        rep = download(["ade20k"], tmp_path / "b", mirror=server.url, **_quiet(retries=2))
        assert rep.done and server.requests == [("ADEChallengeData2016.zip", None),
                                                ("ADEChallengeData2016.zip", "bytes=50000-")]


def test_a_cut_connection_message_says_to_rerun(server, tmp_path):
    with _serve_ade(server, _ade_zip()):
        server.cut["ADEChallengeData2016.zip"] = 1000
        rep = download(["ade20k"], tmp_path, mirror=server.url, **_quiet(retries=0))
        msg = rep.failed["ADEChallengeData2016.zip"]
        assert "lost after 1000 bytes" in msg and "rerun the same command to resume" in msg


def test_a_wrong_checksum_is_refused_and_nothing_is_extracted(server, tmp_path):
    data = _ade_zip()
    other = data[:-1] + bytes([data[-1] ^ 1])
    with _serve_ade(server, data, checksum_of=other):
        rep = download(["ade20k"], tmp_path, mirror=server.url, **_quiet())
    msg = rep.failed["ADEChallengeData2016.zip"]
    assert msg.startswith("ADEChallengeData2016.zip: refused, nothing extracted")
    assert f"expected sha256 {hashlib.sha256(other).hexdigest()}" in msg
    assert f"got {hashlib.sha256(data).hexdigest()}" in msg
    assert not (tmp_path / "ADEChallengeData2016").exists()
    assert (tmp_path / "archives/ADEChallengeData2016.zip.bad").is_file()
    assert not (tmp_path / "archives/ADEChallengeData2016.zip").exists()  # the next run fetches again


def test_a_truncated_archive_is_refused_naming_both_checksums(server, tmp_path):
    data = _ade_zip()
    short = data[: len(data) // 2]
    server_entry = _serve_ade(server, short, checksum_of=data)  # the mirror holds half the file
    with server_entry:
        rep = download(["ade20k"], tmp_path, mirror=server.url, **_quiet())
    msg = rep.failed["ADEChallengeData2016.zip"]
    assert f"expected sha256 {hashlib.sha256(data).hexdigest()}" in msg
    assert f"got {hashlib.sha256(short).hexdigest()} ({len(short)} bytes, published size {len(data)})" in msg
    assert not (tmp_path / "ADEChallengeData2016").exists()


def _tar(add) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        add(t)
    return buf.getvalue()


def _file(t, name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("kind", ["zip-traversal", "zip-absolute", "zip-symlink", "tar-traversal",
                                  "tar-symlink", "tar-hardlink", "tar-device"])
def test_unsafe_members_refuse_the_whole_archive(tmp_path, kind):
    ok = {"ADEChallengeData2016/ok.txt": b"fine"}
    if kind == "zip-traversal":
        data = _zip({**ok, "ADEChallengeData2016/../../evil.txt": b"evil"})
    elif kind == "zip-absolute":
        data = _zip({**ok, "/tmp/evil.txt": b"evil"})
    elif kind == "zip-symlink":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("ADEChallengeData2016/ok.txt", b"fine")
            info = zipfile.ZipInfo("ADEChallengeData2016/link")
            info.external_attr = (0o120777 << 16)
            z.writestr(info, "/etc/passwd")
        data = buf.getvalue()
    else:
        def add(t):
            _file(t, "ADEChallengeData2016/ok.txt", b"fine")
            if kind == "tar-traversal":
                _file(t, "../evil.txt")
            else:
                info = tarfile.TarInfo("ADEChallengeData2016/special")
                info.type = {"tar-symlink": tarfile.SYMTYPE, "tar-hardlink": tarfile.LNKTYPE,
                             "tar-device": tarfile.CHRTYPE}[kind]
                info.linkname = "/etc/passwd"
                t.addfile(info)
        data = _tar(add)
    archive = tmp_path / "a.bin"
    archive.write_bytes(data)
    with pytest.raises(UnsafeArchiveError, match="member"):
        extract(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "ADEChallengeData2016").exists()  # checked before any write
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_an_unsafe_member_is_refused_through_download(server, tmp_path):
    data = _zip({"ADEChallengeData2016/ok.txt": b"fine", "../evil.txt": b"evil"})
    with _serve_ade(server, data):
        rep = download(["ade20k"], tmp_path / "root", mirror=server.url, **_quiet())
    assert "points outside the target folder" in rep.failed["ADEChallengeData2016.zip"]
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "root/ADEChallengeData2016").exists()
    assert not (tmp_path / "root/archives/ADEChallengeData2016.zip.done").exists()


def test_an_unwritable_root_is_refused_naming_it(tmp_path, monkeypatch):
    import dslo.data.downloader as dl

    def refuse(*a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(dl.tempfile, "mkstemp", refuse)
    with pytest.raises(DataError, match=rf"cannot write to {tmp_path / 'ro'} \(Permission denied\); choose a --root"):
        download(["ade20k"], tmp_path / "ro", **_quiet())


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_root_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(DataError, match="cannot write to"):
            download(["ade20k"], ro, **_quiet())
    finally:
        ro.chmod(0o700)


def test_a_full_disk_keeps_the_partial_download_and_resumes(server, tmp_path, monkeypatch):
    import dslo.data.fetch as fetch_mod

    data = _ade_zip()
    real_open = open

    class Full:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, chunk):
            if self.written + len(chunk) > 200_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(chunk)
            return self.f.write(chunk)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(fetch_mod, "open", lambda p, mode="r", *a, **k: Full(real_open(p, mode, *a, **k)),
                        raising=False)
    monkeypatch.setattr(fetch_mod, "_CHUNK", 65536)
    with _serve_ade(server, data):
        rep = download(["ade20k"], tmp_path, mirror=server.url, **_quiet())
        msg = rep.failed["ADEChallengeData2016.zip"]
        assert "disk full while downloading ADEChallengeData2016.zip" in msg and "resumes" in msg
        part = tmp_path / "archives/ADEChallengeData2016.zip.part"
        assert 0 < part.stat().st_size <= 200_000 and not (tmp_path / "ADEChallengeData2016").exists()
        monkeypatch.undo()
        kept = part.stat().st_size
        rep = download(["ade20k"], tmp_path, mirror=server.url, **_quiet())
        assert rep.done and server.requests[-1][1] == f"bytes={kept}-"
    assert (tmp_path / "archives/ADEChallengeData2016.zip").read_bytes() == data


def test_a_full_disk_is_refused_up_front_when_the_size_is_published(server, tmp_path, monkeypatch):
    import shutil as sh

    from dslo.data import fetch as fetch_mod

    monkeypatch.setattr(fetch_mod.shutil, "disk_usage", lambda p: sh._ntuple_diskusage(10**9, 10**9 - 10, 10))
    with _serve_ade(server, _ade_zip()):
        rep = download(["ade20k"], tmp_path, mirror=server.url, **_quiet())
    assert "GiB are free" in rep.failed["ADEChallengeData2016.zip"] and server.requests == []


def _city_zips():
    gt = _zip({"gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png": _png(value=26),
               "license.txt": b"cityscapes"})
    left = _zip({"leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png": _png(6, 8)})
    return gt, left


def test_cityscapes_without_an_account_says_what_to_place_where_then_checks_it(tmp_path, monkeypatch):
    monkeypatch.delenv("CITYSCAPES_USERNAME", raising=False)
    monkeypatch.delenv("CITYSCAPES_PASSWORD", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    rep = download(["cityscapes"], tmp_path, **_quiet())
    msg = rep.failed["gtFine_trainvaltest.zip"]
    assert "gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip" in msg
    assert f"place them in {tmp_path / 'archives'}/" in msg and "CITYSCAPES_USERNAME" in msg
    gt, left = _city_zips()
    (tmp_path / "archives/gtFine_trainvaltest.zip").write_bytes(gt)
    (tmp_path / "archives/leftImg8bit_trainvaltest.zip").write_bytes(left[:-40])  # a broken copy
    rep = download(["cityscapes"], tmp_path, **_quiet())
    assert rep.done == ["gtFine_trainvaltest.zip"]
    assert "not a complete zip" in rep.failed["leftImg8bit_trainvaltest.zip"]
    (tmp_path / "archives/leftImg8bit_trainvaltest.zip").write_bytes(left)
    rep = download(["cityscapes"], tmp_path, **_quiet())
    assert rep.done == ["leftImg8bit_trainvaltest.zip"] and rep.skipped == ["gtFine_trainvaltest.zip"]
    recorded = (tmp_path / "archives/leftImg8bit_trainvaltest.zip.sha256").read_text().split()[0]
    assert recorded == hashlib.sha256(left).hexdigest()
    assert (tmp_path / "cityscapes/leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png").is_file()


def test_cityscapes_with_an_account_logs_in_and_checks_the_published_md5(server, tmp_path, monkeypatch):
    gt, left = _city_zips()
    files = {1: ("gtFine_trainvaltest.zip", gt), 3: ("leftImg8bit_trainvaltest.zip", left)}

    def login(h):
        if h.command == "POST":
            body = h.rfile.read(int(h.headers["Content-Length"])).decode()
            good = "username=ann" in body and "password=secret" in body and "submit=Login" in body
            h.send_response(302 if good else 200)
            if good:
                h.send_header("Set-Cookie", "session=ok; Path=/")
                h.send_header("Location", "/")
        else:
            h.send_response(200)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def listing(h):
        body = json.dumps([{"name": n, "packageID": i, "size": "1 MB", "thirdparty": "0"}
                           for i, (n, _) in files.items()]).encode()
        assert "session=ok" in (h.headers.get("Cookie") or "")
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def md5(i):
        def handler(h):
            body = f"{hashlib.md5(files[i][1]).hexdigest()}  {files[i][0]}\n".encode()
            h.send_response(200)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        return handler

    def package(i):
        def handler(h):
            assert "session=ok" in (h.headers.get("Cookie") or "")
            server.requests.append((files[i][0], h.headers.get("Range")))
            h._send(files[i][1], files[i][0])
        return handler

    server.routes.update({"/login": login, "/downloads/?list": listing,
                          **{f"/md5-sum/?packageID={i}": md5(i) for i in files},
                          **{f"/file-handling/?packageID={i}": package(i) for i in files}})
    monkeypatch.setattr(cs_account, "SITE", server.url)
    monkeypatch.setenv("CITYSCAPES_USERNAME", "ann")
    monkeypatch.setenv("CITYSCAPES_PASSWORD", "wrong")
    rep = download(["cityscapes"], tmp_path, **_quiet())
    assert "refused the login of 'ann'" in rep.failed["gtFine_trainvaltest.zip"]
    monkeypatch.setenv("CITYSCAPES_PASSWORD", "secret")
    rep = download(["cityscapes"], tmp_path, **_quiet())
    assert rep.done == ["gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip"]
    marker = json.loads((tmp_path / "archives/gtFine_trainvaltest.zip.done").read_text())
    assert marker["checksum"] == ["md5", hashlib.md5(gt).hexdigest()]


def test_netrc_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("CITYSCAPES_USERNAME", raising=False)
    monkeypatch.delenv("CITYSCAPES_PASSWORD", raising=False)
    rc = tmp_path / "netrc"
    rc.write_text("machine www.cityscapes-dataset.com login ann password secret\n")
    rc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(rc))
    assert cs_account.credentials() == ("ann", "secret")


def test_the_cli_downloads_prepares_and_lists(server, tmp_path, capsys):
    with _serve_ade(server, _ade_zip()):
        code = cli_main(["data", "download", "ade20k", "--root", str(tmp_path), "--mirror", server.url, "-q"])
        assert code == 1  # 3 of ADE20K's 2000 validation images: the count check says so
        out, err = capsys.readouterr()
        assert "ade20k 3/2000" in out and "1997 missing" in err
        assert cli_main(["data", "list", "--root", str(tmp_path), "--json"]) == 0
        records = {r["key"]: r for r in json.loads(capsys.readouterr().out)}
        assert records["ade20k"]["archives"][0]["downloaded"] is True
        assert records["ade20k"]["counts"] == {"ade20k": 3} and records["voc"]["archives"][0]["downloaded"] is False
        assert cli_main(["data", "list", "--root", str(tmp_path)]) == 0
        assert "ADEChallengeData2016.zip" in capsys.readouterr().out


def test_the_shipped_catalogue_cites_a_source_for_every_checksum():
    for a in ARCHIVES.values():
        assert a.source, a.name
        if a.checksum is not None:
            algo, hexd = a.checksum
            assert len(hexd) == hashlib.new(algo).digest_size * 2, a.name
    with pytest.raises(ValueError, match="unknown data set 'vocc'; did you mean voc"):
        download(["vocc"], "x")

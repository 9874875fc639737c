"""The Label Studio ML backend over HTTP (uvicorn in this process, worker processes with the colour
stand-ins): the protocol, the labels of `dslo segment`, and every refusal of the image policy and
the caps. Each refused or unreadable task gets an empty result and a logged reason; the other
tasks of its call are still predicted; no answer carries a traceback or a local path."""

import asyncio
import base64
import functools
import http.server
import io
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image
from standins import colour_picture, colour_segmenter, save_image

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
brush = pytest.importorskip("label_studio_sdk.converter.brush")

from dslo.servers.label_studio import Backend, BackendSettings, FetchLimits, ImagePolicy  # noqa: E402
from dslo.servers.label_studio.app import create_app  # noqa: E402

CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
          '<Label value="red"/><Label value="green"/><Label value="blue"/></BrushLabels></View>')
AUTH = ("labeller", "s3cret")
MAX_BYTES, MAX_PIXELS = 200_000, 100_000


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


class Files(http.server.BaseHTTPRequestHandler):
    """A small file server on 127.0.0.1: images, redirects, an oversized body."""

    routes: dict = {}
    port = 0

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/same-host-redirect":
            return self._redirect(f"http://127.0.0.1:{self.port}/img/one.png")
        if self.path == "/other-host-redirect":
            return self._redirect(f"http://localhost:{self.port}/img/one.png")
        body = self.routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        if self.path != "/no-length":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, to):
        self.send_response(302)
        self.send_header("Location", to)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(backend URL, file server URL, local-files folder, the log, the backend)."""
    root = tmp_path_factory.mktemp("files")
    img, _ = colour_picture(60, 90)
    save_image(root / "one.png", img)
    save_image(root / "sub" / "two.png", img[:, ::-1].copy())
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (tmp_path_factory.getbasetemp() / "secret.png").write_bytes(_png(img))  # outside the folder
    Files.routes = {"/img/one.png": _png(img), "/img/huge-pixels.png": _png(np.zeros((400, 400, 3), np.uint8)),
                    "/img/big.bin": b"\0" * (MAX_BYTES + 10), "/no-length": b"\0" * (MAX_BYTES + 10)}
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    Files.port = files.server_address[1]
    threading.Thread(target=files.serve_forever, daemon=True).start()

    log: list[str] = []
    settings = BackendSettings(policy=ImagePolicy(allow_hosts=("127.0.0.1",), local_files=root),
                               limits=FetchLimits(MAX_BYTES, MAX_PIXELS, timeout=10), max_concurrent=2,
                               max_body_bytes=256_000, basic_auth=AUTH, threads=1,
                               factory=functools.partial(colour_segmenter, None))
    backend = Backend(settings, log.append)
    backend.warm_up()
    server = uvicorn.Server(uvicorn.Config(create_app(backend), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{Files.port}", root, log, backend
    server.should_exit = True
    thread.join(10)
    files.shutdown()
    backend.close()


def call(url, path, body=None, auth=AUTH, raw=None, timeout=60):
    """(status, parsed JSON or text) of a request to the backend."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url + path, data=data, method="POST" if data is not None else "GET")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def masks_of(pred) -> dict[str, np.ndarray]:
    out = {}
    for r in pred["result"]:
        m = brush.decode_rle(r["value"]["rle"]).reshape(r["original_height"], r["original_width"], 4)[:, :, 3]
        out[r["value"]["brushlabels"][0]] = m == 255
    return out


def test_health_setup_and_basic_auth(served):
    url, *_ = served
    for path in ("/", "/health"):
        status, body = call(url, path)
        assert status == 200 and body["status"] == "UP"
    assert call(url, "/health", auth=None)[0] == 401
    assert call(url, "/health", auth=("labeller", "wrong"))[0] == 401
    assert call(url, "/predict", {"tasks": []}, auth=("x", "s3cret"))[0] == 401
    status, body = call(url, "/setup", {"project": "3.1700000000", "schema": CONFIG})
    assert status == 200 and body["model_version"].startswith("dslo-")
    status, body = call(url, "/setup", {"project": "3.1", "schema": "<View><Image name='i' value='$i'/></View>"})
    assert status == 400 and "no <BrushLabels> control" in body["error"]
    status, body = call(url, "/setup", {"project": "3.1", "schema": CONFIG.replace('toName="image"', 'toName="img"')})
    assert status == 400 and "toName='img'" in body["error"]
    status, body = call(url, "/setup", {"project": "3.1", "schema": CONFIG.replace('<Label value="red"/>', "")
                                        .replace('<Label value="green"/>', "").replace('<Label value="blue"/>', "")})
    assert status == 400 and "no <Label" in body["error"]


def test_predict_gives_dslo_segments_labels_and_refuses_what_the_policy_forbids(served):
    url, files, root, log, _ = served
    img, _ = colour_picture(60, 90)
    expected = colour_segmenter().predict(img, [["red"], ["green"], ["blue"]]).labels
    ok = {1: "one.png", 2: f"{files}/img/one.png", 3: f"{files}/same-host-redirect", 4: str(root / "sub/../one.png")}
    refused = {
        10: ("file:///etc/passwd", "file:// URLs are not fetched"),
        11: ("../secret.png", "outside the --local-files folder"),
        12: ("/etc/hostname", "outside the --local-files folder"),
        13: ("http://example.com/a.png", "not Label Studio's and not allowed"),
        14: (f"{files}/other-host-redirect", "redirected to another host"),
        15: (f"{files}/img/big.bin", "allowed"),
        16: (f"{files}/no-length", "more than the 200,000 bytes allowed"),
        17: (f"{files}/img/huge-pixels.png", "400x400 is more than the 100,000 pixels allowed"),
        18: ("broken.png", "cannot read image broken.png"),
        19: (f"{files}/img/missing.png", "HTTP 404"),
        20: ("/data/upload/1/x.png", "set LABEL_STUDIO_URL"),
        21: (None, "no image URL"),
    }
    tasks = [{"id": i, "data": {"image": v}} for i, v in ok.items()] + \
            [{"id": i, "data": {"image": v}} for i, (v, _) in refused.items()]
    tasks.insert(3, tasks.pop())  # a refused task between good ones
    before = len(log)
    status, body = call(url, "/predict", {"tasks": tasks, "label_config": CONFIG, "project": "3.1"})
    assert status == 200
    assert len(body["results"]) == len(tasks)
    assert sorted(body["failed"]) == sorted(refused) and body["not_done"] == []
    for task, res in zip(tasks, body["results"], strict=True):
        if task["id"] in refused:
            assert res["result"] == [] and res["score"] == 0.0
            continue
        got = masks_of(res)
        assert set(got) == {"red", "green", "blue"}
        for cid, name in enumerate(("red", "green", "blue")):
            assert np.array_equal(got[name], expected == cid)
        assert all(r["from_name"] == "tag" and r["to_name"] == "image" for r in res["result"])
        assert 0 < res["score"] <= 1
    lines = log[before:]
    for tid, (_, words) in refused.items():
        assert any(line.startswith(f"task {tid}:") and words in line for line in lines), (tid, words, lines)
    text = json.dumps(body)
    assert "Traceback" not in text and str(root) not in text and "/tmp" not in text


def test_request_caps_and_errors_never_leak_internals(served, monkeypatch):
    url, _, root, log, backend = served
    status, body = call(url, "/predict", raw=b"{" + b" " * 300_000 + b"}")
    assert status == 413 and "larger than 256,000 bytes" in body["error"]
    status, body = call(url, "/predict", raw=b"not json")
    assert status == 400 and body["error"] == "the request body is not JSON"
    status, body = call(url, "/predict", {"tasks": "x", "label_config": CONFIG})
    assert status == 400 and "'tasks' must be a list" in body["error"]

    def broken(*a, **k):
        raise KeyError(str(root / "internal" / "state.py"))

    monkeypatch.setattr(backend, "project", broken)
    status, body = call(url, "/setup", {"project": "1.1", "schema": CONFIG})
    assert status == 500 and body["error"] == "internal error; the server log has the details"
    assert str(root) not in json.dumps(body) and "Traceback" in log[-1]  # the log has it, the answer not


def test_time_budget_answers_with_the_tasks_done(served):
    _, _, root, _, backend = served
    budget = Backend(BackendSettings(policy=backend.settings.policy, time_budget=0.001, max_concurrent=1,
                                     factory=backend.settings.factory), lambda _m: None)
    budget._pool, budget._estimate = backend.pool(), 10.0  # share the warm workers; a task takes 10 s, say
    tasks = [{"id": i, "data": {"image": "one.png"}} for i in range(3)]
    body = asyncio.run(budget.predict({"tasks": tasks, "label_config": CONFIG}))
    assert body["not_done"] == [0, 1, 2] and body["failed"] == []
    assert all("result" not in r and "time budget" in r["error"] for r in body["results"])  # Label Studio asks again


@pytest.mark.slow
def test_no_prediction_lost_or_duplicated_under_concurrent_calls(served):
    """Several /predict calls at once while /health is polled: every task answered once, in order."""
    url, *_ = served
    answers, health = {}, []
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            t0 = time.perf_counter()
            assert call(url, "/health")[0] == 200
            health.append(time.perf_counter() - t0)
            time.sleep(0.3)

    def predict(k):
        tasks = [{"id": 100 * k + j, "data": {"image": "one.png" if j % 2 else "sub/two.png"}} for j in range(3)]
        answers[k] = (tasks, call(url, "/predict", {"tasks": tasks, "label_config": CONFIG}, timeout=300)[1])

    poller = threading.Thread(target=poll)
    poller.start()
    threads = [threading.Thread(target=predict, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    poller.join()
    assert sorted(answers) == [0, 1, 2, 3] and health
    for tasks, body in answers.values():
        assert len(body["results"]) == len(tasks) and not body["failed"] and not body["not_done"]
        for task, res in zip(tasks, body["results"], strict=True):
            flipped = task["data"]["image"] == "sub/two.png"
            red = masks_of(res)["red"]
            assert red[:, -1].all() if flipped else red[:, 0].all()  # each task's own image, not a neighbour's


def test_a_config_path_traversal_in_local_files_is_caught_before_reading(tmp_path):
    policy = ImagePolicy(local_files=tmp_path)
    (tmp_path / "inside.png").write_bytes(b"x")
    (tmp_path / "link.png").symlink_to("/etc/hostname")
    assert policy.resolve("inside.png").location == str(tmp_path / "inside.png")
    assert policy.resolve("/data/local-files/?d=inside.png").location == str(tmp_path / "inside.png")
    for value in ("link.png", "/data/local-files/?d=../../etc/passwd", "//evil.example/x.png", "ftp://h/x.png"):
        with pytest.raises(Exception) as info:
            policy.resolve(value)
        assert "Refused" in type(info.value).__name__
    with pytest.raises(ValueError, match="no such folder"):
        ImagePolicy(local_files=tmp_path / "missing")
    key_policy = ImagePolicy(label_studio_url="http://ls.example:8080/", api_key="k", allow_hosts=("cdn.example",))
    assert key_policy.resolve("/data/upload/1/a.png").label_studio == ("http://ls.example:8080", "k")
    assert key_policy.resolve("http://cdn.example/a.png").label_studio is None  # the key goes to Label Studio only
    assert key_policy.resolve("http://ls.example:9999/a.png").label_studio is None  # another port: another server


def test_the_command_checks_its_settings_before_any_worker_starts(tmp_path, monkeypatch, capsys):
    from dslo.cli import main

    started = []
    monkeypatch.setattr("dslo.servers.label_studio.serve", lambda *a, **k: started.append(a))
    assert main(["label-studio", "--set", "nms_treshold=0.3"]) == 1
    assert "did you mean nms_threshold" in capsys.readouterr().err
    assert main(["label-studio", "--local-files", str(tmp_path / "missing")]) == 1
    assert "no such folder" in capsys.readouterr().err
    monkeypatch.setenv("BASIC_AUTH_USER", "me")
    assert main(["label-studio"]) == 1
    assert "BASIC_AUTH_PASS" in capsys.readouterr().err
    monkeypatch.setenv("BASIC_AUTH_PASS", "pw")
    monkeypatch.setenv("LABEL_STUDIO_URL", "ftp://ls.example")
    assert main(["label-studio", "--label-studio-url", "ftp://ls.example"]) == 1
    assert "must be an http(s) address" in capsys.readouterr().err
    assert not started
    assert main(["label-studio", "--host", "0.0.0.0", "--port", "0", "--label-studio-url", "http://ls.example",
                 "--allow-host", "cdn.example", "--max-concurrent", "2", "--accel", "int8", "--device", "cpu"]) == 0
    (settings, host, port), = started
    assert (host, settings.max_concurrent, settings.basic_auth) == ("0.0.0.0", 2, ("me", "pw"))
    assert settings.models.accel == "int8"  # the workers' segmenters quantize as `dslo segment --accel int8`
    assert settings.policy.hosts == {"ls.example", "cdn.example"}

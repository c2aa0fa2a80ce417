"""Issue 24: fitted detectors as artifacts, the pirated model as an HTTP service, the owner verifying it over HTTP,
and the HTTP load benchmark (all on the tiny target)."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dnnpiracy.attack import PiratedClassifier, fit_detector
from dnnpiracy.attack.artifact import (
    DETECTOR_FILE,
    META_FILE,
    TENSORS_FILE,
    load_detector,
    model_meta_for,
    save_detector,
)
from dnnpiracy.cli import main
from dnnpiracy.config import DetectorConfig, GanConfig
from dnnpiracy.io import ArtifactError
from dnnpiracy.models import arch_info, build_model
from dnnpiracy.serve import create_app
from dnnpiracy.serve.load import ServerProcess, free_port
from dnnpiracy.training import predict_labels
from dnnpiracy.watermark import verify as verify_fn

with warnings.catch_warnings():        # starlette's test client warns about httpx at import
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

INFO = arch_info("small-cnn")


def _png(arr: np.ndarray, mode: str = "L") -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One torch thread in this module: these tests check behaviour, not speed, and on a machine whose cores are
    busy two threads contend (the paper detector's DCGANs fit 10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def served(tiny_target, tmp_path_factory):
    """The tiny target's folder, a default-detector artifact written by `dnnpiracy fit-detector`, the loaded
    detector, and queries: clean evaluation images, the embedded and some fresh triggers."""
    ds, splits, target = tiny_target
    out = tmp_path_factory.mktemp("served") / "detector"
    res = CliRunner().invoke(main, ["fit-detector", "--model", str(target.out_dir), "--detector",
                                    "default", "--out", str(out), "--surrogate-fraction", "0.5", "--seed", "0"])
    assert res.exit_code == 0, res.output
    meta = model_meta_for(target.out_dir)
    det = load_detector(out, target.model, INFO, meta)
    queries = torch.cat([ds.test_x[splits.evaluation_idx[:40]], target.triggers.images,
                         target.fresh_triggers.images[:20]])
    return {"ds": ds, "splits": splits, "target": target, "model_dir": target.out_dir, "det_dir": out, "det": det,
            "queries": queries, "triggers": target.out_dir / "triggers.safetensors"}


# ---------------------------------------------------------------------------------------------- artifacts
@pytest.mark.parametrize("name", ["default", "knn-input", "lof", "paper"])
def test_detector_artifact_round_trip_gives_identical_scores_and_flags(served, tmp_path, name):
    ds, splits, target = served["ds"], served["splits"], served["target"]
    sur = splits.surrogate_idx
    det = fit_detector(target.model, INFO, ds.test_x[sur], ds.test_y[sur],
                       DetectorConfig(detector=name, gan=GanConfig(epochs=2)), tau=2.0, dataset=ds.name)
    x = served["queries"]
    before = det.inspect(x)
    meta = model_meta_for(target.out_dir)
    save_detector(det, tmp_path / "det", meta, target.model)
    assert sorted(p.name for p in (tmp_path / "det").iterdir()) == sorted([META_FILE, DETECTOR_FILE, TENSORS_FILE])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]        # no temporary folder left
    loaded = load_detector(tmp_path / "det", target.model, INFO, meta)
    after = loaded.inspect(x)
    assert torch.equal(before.scores, after.scores)
    assert torch.equal(before.flags, after.flags)
    assert torch.equal(det.thresholds, loaded.thresholds)
    assert loaded.describe() == det.describe() and loaded.needs_heatmaps == det.needs_heatmaps
    assert type(loaded.scorer) is type(det.scorer)
    # and the pirate built on either answers alike (the deterministic strategy)
    assert torch.equal(PiratedClassifier(det, "runner-up").predict(x),
                       PiratedClassifier(loaded, "runner-up").predict(x))
    # nothing pickled: the files are JSON and safetensors
    for f in (META_FILE, DETECTOR_FILE):
        json.loads((tmp_path / "det" / f).read_text())
    assert (tmp_path / "det" / TENSORS_FILE).read_bytes()[8:9] == b"{"    # safetensors: u64 header size, JSON header


def test_artifact_refuses_another_model(served, tmp_path):
    target, det = served["target"], served["det"]
    meta = model_meta_for(target.out_dir)
    other = build_model("small-cnn").eval()
    with pytest.raises(ArtifactError, match="another model.*weights"):
        load_detector(served["det_dir"], other, INFO)
    with pytest.raises(ArtifactError, match="model file SHA-256"):
        load_detector(served["det_dir"], target.model, INFO, {**meta, "model_sha256": "0" * 64})
    with pytest.raises(ArtifactError, match="arch='small-cnn', not 'resnet18'"):
        load_detector(served["det_dir"], target.model, INFO, {**meta, "arch": "resnet18"})
    with pytest.raises(ArtifactError, match="dataset='digits-tiny', not 'fashion-mnist'"):
        load_detector(served["det_dir"], target.model, INFO, {**meta, "dataset": "fashion-mnist"})
    # the CLI refuses it in one line, exit status 2
    save_detector(det, tmp_path / "det", meta, target.model)
    from dnnpiracy.training import save_model
    save_model(tmp_path / "other" / "model.safetensors", other, {"arch": "small-cnn", "dataset": "digits-tiny",
                                                                 "num_classes": 10})
    res = CliRunner().invoke(main, ["serve", "--model", str(tmp_path / "other"), "--detector", str(tmp_path / "det")])
    assert res.exit_code == 2 and "fitted on another model" in res.output


def test_corrupt_or_missing_artifact_files_are_refused(served, tmp_path):
    import shutil
    target = served["target"]
    meta = model_meta_for(target.out_dir)

    def fresh(name: str) -> Path:
        d = tmp_path / name
        shutil.copytree(served["det_dir"], d)
        return d

    d = fresh("truncated")
    data = (d / TENSORS_FILE).read_bytes()
    (d / TENSORS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="corrupt file"):
        load_detector(d, target.model, INFO, meta)
    d = fresh("flipped")
    data = bytearray((d / TENSORS_FILE).read_bytes())
    data[-5] ^= 0xFF
    (d / TENSORS_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupt file"):
        load_detector(d, target.model, INFO, meta)
    d = fresh("missing")
    (d / DETECTOR_FILE).unlink()
    with pytest.raises(ArtifactError, match="missing file"):
        load_detector(d, target.model, INFO, meta)
    d = fresh("garbled-meta")
    (d / META_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt JSON"):
        load_detector(d, target.model, INFO, meta)
    d = fresh("old-format")
    m = json.loads((d / META_FILE).read_text())
    (d / META_FILE).write_text(json.dumps({**m, "format": "dnnpiracy-detector/0"}))
    with pytest.raises(ArtifactError, match="format"):
        load_detector(d, target.model, INFO, meta)
    # an unknown scorer class (hashes made consistent, as a deliberate edit would) is refused by name
    d = fresh("unknown-scorer")
    (d / DETECTOR_FILE).write_text((d / DETECTOR_FILE).read_text().replace('"KNNScorer"', '"os.system"'))
    from dnnpiracy.io import sha256_file
    m["files"][DETECTOR_FILE] = sha256_file(d / DETECTOR_FILE)
    (d / META_FILE).write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="unknown scorer 'os.system'"):
        load_detector(d, target.model, INFO, meta)
    with pytest.raises(ArtifactError, match="missing"):
        load_detector(tmp_path / "nowhere", target.model, INFO, meta)


def test_failed_save_leaves_no_partial_folder_and_keeps_the_previous_artifact(served, tmp_path):
    from dataclasses import replace

    from dnnpiracy.attack import KNNScorer
    target, det = served["target"], served["det"]
    meta = model_meta_for(target.out_dir)
    bad_scorer = KNNScorer("input")
    bad_scorer.refs = {0: torch.zeros(2, 3)}
    bad_scorer.hook = lambda x: x                  # no safe representation
    with pytest.raises(ArtifactError, match="no safe"):
        save_detector(replace(det, scorer=bad_scorer), tmp_path / "det", meta)
    assert list(tmp_path.iterdir()) == []
    save_detector(det, tmp_path / "det", meta, target.model)
    with pytest.raises(ArtifactError, match="no safe"):
        save_detector(replace(det, scorer=bad_scorer), tmp_path / "det", meta)
    assert [p.name for p in tmp_path.iterdir()] == ["det"]
    load_detector(tmp_path / "det", target.model, INFO, meta)     # the earlier artifact, intact
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("x")
    with pytest.raises(ArtifactError, match="not a detector artifact"):
        save_detector(det, tmp_path / "notes", meta)
    res = CliRunner().invoke(main, ["fit-detector", "--model", str(served["model_dir"]), "--out",
                                    str(tmp_path / "notes"), "--detector", "knn-input", "--surrogate-fraction", "0.5"])
    assert res.exit_code == 2 and "not a detector artifact" in res.output and "fitting" not in res.output
    assert (tmp_path / "notes" / "mine.txt").read_text() == "x"


# ----------------------------------------------------------------------------------------------- the app
def _image(v: float = 0.5) -> list:
    return [[v] * 28 for _ in range(28)]


def _bad_requests(max_batch: int, max_body: int) -> list[tuple[str, dict, int, str]]:
    ok = _image()
    rgb = _png(np.zeros((28, 28, 3), np.uint8), "RGB")
    grey = _png(np.zeros((28, 28), np.uint8))

    def raw(body: bytes, ctype: str = "application/json") -> dict:
        return {"content": body, "headers": {"content-type": ctype}}

    def stream():
        for _ in range(4):
            yield b" " * (max_body // 2)
    return [
        ("wrong shape", {"json": {"images": [[[0.5] * 27] * 28]}}, 422, "28 rows of 28 numbers"),
        ("ragged", {"json": {"images": [ok, [[0.5] * 28] * 27]}}, 422, "28 rows of 28 numbers"),
        ("flat list", {"json": {"images": [0.5] * 784}}, 422, "28 rows of 28 numbers"),
        ("strings", {"json": {"images": [[["0.5"] * 28] * 28]}}, 422, "numbers only; found str"),
        ("booleans", {"json": {"images": [[[True] + [0.5] * 27] + [[0.5] * 28] * 27]}}, 422, "found boolean"),
        ("nulls", {"json": {"images": [[[None] * 28] * 28]}}, 422, "found null"),
        ("NaN", raw(b'{"images": [[' + b",".join([b"[" + b",".join([b"NaN"] * 28) + b"]"] * 28) + b"]]}"), 422,
         "NaN or infinite"),
        ("inf", raw(b'{"images": [[' + b",".join([b"[" + b",".join([b"1e999"] * 28) + b"]"] * 28) + b"]]}"), 422,
         "NaN or infinite"),
        ("above 1", {"json": {"images": [_image(1.5)]}}, 422, "must be in [0, 1]"),
        ("below 0", {"json": {"images": _image(-0.1)}}, 422, "must be in [0, 1]"),
        ("empty batch", {"json": {"images": []}}, 422, "empty batch"),
        ("batch above the maximum", {"json": {"images": [ok] * (max_batch + 1)}}, 422,
         f"exceeds the maximum of {max_batch}"),
        ("no images field", {"json": {"pictures": [ok]}}, 422, "unknown field"),
        ("not an object", {"json": [ok]}, 422, "expected a JSON object"),
        ("invalid JSON", raw(b'{"images": [[[0.5,'), 400, "invalid JSON"),
        ("deeply nested", raw(b'{"images": ' + b"[" * 50000 + b"]" * 50000 + b"}"), 400, "invalid JSON"),
        ("empty body", raw(b""), 400, "empty body"),
        ("non-image bytes", {"files": [("files", ("a.png", b"GIF89a not a png", "image/png"))]}, 400, "not a PNG"),
        ("truncated PNG", {"files": [("files", ("a.png", grey[:50], "image/png"))]}, 400, "cannot decode"),
        ("PNG of the wrong size", {"files": [("files", ("a.png", _png(np.zeros((14, 28), np.uint8)), "image/png"))]},
         422, "must be 28x28"),
        ("colour PNG", {"files": [("files", ("a.png", rgb, "image/png"))]}, 422, "greyscale"),
        ("too many PNGs", {"files": [("files", (f"{i}.png", grey, "image/png")) for i in range(max_batch + 2)]}, 422,
         f"maximum is {max_batch}"),
        ("empty multipart", raw(b"--xyz--\r\n", "multipart/form-data; boundary=xyz"), 422, "empty batch"),
        ("multipart without boundary", raw(b"abc", "multipart/form-data"), 400, "multipart"),
        ("raw non-PNG body", raw(b"\x00\x01\x02", "image/png"), 400, "not a PNG"),
        ("unsupported type", raw(b"0.5", "text/plain"), 415, "unsupported Content-Type"),
        ("body above the limit", raw(b" " * (max_body + 1)), 413, "too large"),
        ("streamed body above the limit", {"content": stream(), "headers": {"content-type": "application/json"}},
         413, "too large"),
    ]


CASES = _bad_requests(4, 200_000)


@pytest.fixture(scope="module")
def client(served):
    model = served["target"].model
    pirate = PiratedClassifier(served["det"], "runner-up")
    app = create_app(pirate.predict, max_batch=4, max_body_bytes=200_000)
    with TestClient(app) as c:
        yield c, model


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_4xx_naming_the_problem_and_the_service_keeps_serving(client, case):
    c, model = client
    _name, kwargs, status, words = case
    r = c.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    good = c.post("/v1/predict", json={"images": [_image(0.0), _image(0.25)]})
    assert good.status_code == 200 and len(good.json()["labels"]) == 2


def test_json_png_and_raw_png_give_the_same_answers_and_nothing_says_flagged(client, served):
    c, _model = client
    x = served["queries"][[0, 1, 40, 41]]                      # two clean images, two triggers
    x = (x * 255).round() / 255                                # what survives an 8-bit PNG exactly
    pngs = [_png((img[0].numpy() * 255).round().astype(np.uint8)) for img in x]
    by_json = c.post("/v1/predict", json={"images": x[:, 0].tolist()}).json()
    by_files = c.post("/v1/predict", files=[("files", (f"{i}.png", p, "image/png")) for i, p in enumerate(pngs)]).json()
    by_raw = [c.post("/v1/predict", content=p, headers={"content-type": "image/png"}).json()["labels"][0] for p in pngs]
    single = c.post("/v1/predict", json={"images": x[0, 0].tolist()}).json()
    assert set(by_json) == {"labels"}                          # labels only: no score, no flag
    assert by_json == by_files and by_json["labels"] == by_raw and single["labels"] == by_json["labels"][:1]
    want = PiratedClassifier(served["det"], "runner-up").predict(x).tolist()
    assert by_json["labels"] == want
    h = c.get("/healthz").json()
    assert h == {"status": "ok", "max_batch": 4, "image_shape": [28, 28], "num_classes": 10}
    assert c.get("/docs").status_code == 200 and "/v1/predict" in c.get("/openapi.json").json()["paths"]


def test_an_internal_error_is_a_generic_500_and_the_service_recovers():
    calls = {"n": 0}

    def flaky(x):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("secret internals /home/pirate")
        return torch.zeros(len(x), dtype=torch.long)
    with TestClient(create_app(flaky)) as c:
        r = c.post("/v1/predict", json={"images": [_image()]})
        assert r.status_code == 500 and r.json() == {"detail": "internal server error"}
        assert c.post("/v1/predict", json={"images": [_image()]}).json() == {"labels": [0]}


def test_concurrent_requests_are_answered_in_shared_batches():
    sizes = []

    def predict(x):          # label = the image's first pixel x 10: each request must get its own answers back
        sizes.append(len(x))
        time.sleep(0.02)
        return (x[:, 0, 0, 0] * 10).round().long()
    app = create_app(predict, max_batch=8, batch_window_ms=50)

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            reqs = [c.post("/v1/predict", json={"images": [_image(i / 10)] * (1 + i % 3)}) for i in range(10)]
            return await asyncio.gather(*reqs)
    answers = asyncio.run(go())
    for i, r in enumerate(answers):
        assert r.status_code == 200 and r.json()["labels"] == [i] * (1 + i % 3)
    assert sum(sizes) == sum(1 + i % 3 for i in range(10))
    assert len(sizes) < 10 and max(sizes) <= 8                 # batched, never above the maximum


@pytest.fixture(scope="module")
def api_schema(served):
    import schemathesis
    app = create_app(PiratedClassifier(served["det"], "runner-up").predict, max_batch=4, max_body_bytes=100_000)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _schemathesis_test():
    import schemathesis
    from hypothesis import HealthCheck, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance
    schema = schemathesis.pytest.from_fixture("api_schema")

    @schema.parametrize()
    @settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def test_openapi_schema_fuzzed_by_schemathesis_finds_no_server_error(case):
        case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])
    return test_openapi_schema_fuzzed_by_schemathesis_finds_no_server_error


test_openapi_schema_fuzzed_by_schemathesis_finds_no_server_error = _schemathesis_test()


# ------------------------------------------------------------------------------------- the real server
class _ThreadServer:
    """uvicorn in a thread of this process (cheaper to start than a second subprocess)."""

    def __init__(self, app):
        import uvicorn
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def real_server(served):
    """`python -m dnnpiracy serve` in its own process: the pirated classifier with the runner-up strategy."""
    with ServerProcess(served["model_dir"], served["det_dir"], threads=1, extra=["--strategy", "runner-up"]) as srv:
        yield srv


def test_real_server_answers_as_the_in_process_pirated_classifier(served, real_server):
    x = served["queries"]
    r = httpx.post(real_server.url + "/v1/predict", json={"images": x[:, 0].tolist()}, timeout=60)
    assert r.status_code == 200
    got = torch.tensor(r.json()["labels"])
    pirate = PiratedClassifier(served["det"], "runner-up")
    ans = pirate.answer(x)
    assert torch.equal(got, ans.labels)
    assert torch.equal(got[~ans.flags], ans.target_labels[~ans.flags])        # unflagged: the target's own label
    assert (got[ans.flags] != ans.target_labels[ans.flags]).all()             # flagged: never the target's label
    assert ans.flags[40:55].sum() >= 10                                       # the embedded triggers are caught
    bad = httpx.post(real_server.url + "/v1/predict", json={"images": [[[2.0] * 28] * 28]}, timeout=60)
    assert bad.status_code == 422 and "[0, 1]" in bad.json()["detail"]
    assert httpx.get(real_server.url + "/healthz", timeout=10).json()["status"] == "ok"


def test_verify_url_gives_the_in_process_verdict(served, real_server):
    from dnnpiracy.watermark import load_trigger_set
    ts = load_trigger_set(served["triggers"])
    runner = CliRunner()
    # the pirated service against the pirated classifier verified in process
    res = runner.invoke(main, ["verify", "--url", real_server.url, "--triggers", str(served["triggers"]), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    want = verify_fn(PiratedClassifier(served["det"], "runner-up").predict, ts.images, ts.labels, 10).to_dict()
    assert got == want and got["verdict"] == "not pirated"
    # the bare model served, against `verify --model` on the same model: the same output, word for word
    model = served["target"].model
    app = create_app(lambda x: predict_labels(model, x), max_batch=4)          # the client sends batches of <= 4
    with _ThreadServer(app) as bare:
        for extra in (["--json"], []):
            over_http = runner.invoke(main, ["verify", "--url", bare.url, "--triggers", str(served["triggers"]),
                                             *extra])
            local = runner.invoke(main, ["verify", "--model", str(served["model_dir"]), "--triggers",
                                         str(served["triggers"]), *extra])
            assert over_http.exit_code == 0 and local.exit_code == 0, over_http.output + local.output
            assert over_http.output == local.output
    assert local.output.startswith("pirated: 15/15 trigger inputs")      # the bare model keeps its watermark
    # exactly one of --model / --url
    for args in ([], ["--model", str(served["model_dir"]), "--url", real_server.url]):
        res = runner.invoke(main, ["verify", *args, "--triggers", str(served["triggers"])])
        assert res.exit_code == 2 and "exactly one of --model" in res.output
    res = runner.invoke(main, ["verify", "--url", f"http://127.0.0.1:{free_port()}", "--triggers",
                               str(served["triggers"])])
    assert res.exit_code == 2 and "cannot reach" in res.output


def test_bench_http_runs_on_the_tiny_model(served, tmp_path):
    res = CliRunner().invoke(main, ["bench-http", "--model", str(served["model_dir"]), "--detector",
                                    str(served["det_dir"]), "--requests", "40", "--concurrency", "8", "--warmup", "4",
                                    "--seconds", "0.05", "--server-threads", "1", "--json", str(tmp_path / "b.json"),
                                    "--md", str(tmp_path / "b.md")])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "b.json").read_text())
    for mode in ("pirated", "bare"):
        r = out["served"][mode]
        assert r["answered"] == 40 and r["errors"] == 0 and r["throughput"] > 0
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
    assert out["served_pirated_over_bare"] > 0 and out["in_process_batch256"]["pirated"] > 0
    assert 0.9 <= out["served"]["pirated"]["same_label_as_bare"] <= 1.0      # clean queries: mostly unflagged
    md = (tmp_path / "b.md").read_text()
    assert "served pirated" in md and "served bare" in md and "served pirated / served bare" in md


def test_model_hash_covers_batchnorm_buffers():
    """A ResNet's BatchNorm counters are 0-dim integer tensors: the weights' hash reads them too."""
    from dnnpiracy.attack.artifact import model_state_sha256
    from dnnpiracy.models import build_model
    torch.manual_seed(0)
    m = build_model("resnet18", "imagenet", 10)
    h = model_state_sha256(m)
    assert h == model_state_sha256(m) and len(h) == 64
    bn = next(mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    with torch.no_grad():
        bn.num_batches_tracked += 1
    assert model_state_sha256(m) != h

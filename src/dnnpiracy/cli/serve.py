"""``dnnpiracy fit-detector``, ``serve`` and ``verify --url``: the pirated model as a black-box HTTP service and the
owner verifying it over the wire (what serving it costs: ``bench-http``, in cli/bench.py)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import click

from dnnpiracy.cli import main
from dnnpiracy.cli.options import data_dir_option, echo_verification
from dnnpiracy.config import STRATEGIES, DetectorConfig, GanConfig


def _model_file(model_dir: str | Path) -> Path:
    """model.safetensors of a target folder, or of the target a `dnnpiracy run` folder names (its report.json's
    target_dir), or the file itself."""
    path = Path(model_dir)
    if not path.is_dir():
        return path
    if not (path / "model.safetensors").exists() and (path / "report.json").exists():
        target = json.loads((path / "report.json").read_text()).get("target_dir")
        if target:
            return Path(target) / "model.safetensors"
    return path / "model.safetensors"


def _load_served(model_dir: str, detector_dir: str | None):
    """(model, model metadata, model facts, detector or None) for a model folder and a detector artifact."""
    from dnnpiracy.attack.artifact import load_detector, model_meta_for
    from dnnpiracy.models import arch_info
    from dnnpiracy.training import load_model
    path = _model_file(model_dir)
    model, meta = load_model(path)
    facts = model_meta_for(path)
    det = None
    if detector_dir is not None:
        det = load_detector(detector_dir, model, arch_info(meta["arch"], meta.get("stem", "imagenet")), facts)
    return model, meta, facts, det


# ------------------------------------------------------------------------------------------------ fit-detector
@main.command("fit-detector")
@click.option("--model", "model_dir", type=click.Path(exists=True), required=True,
              help="a model folder (model.safetensors + .json, as `dnnpiracy watermark` writes it) or file")
@click.option("--detector", default="default", show_default=True,
              help="default | paper | any name of `dnnpiracy detectors` | ensemble:SCORER,SCORER,...")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="the detector artifact folder to write")
@click.option("--surrogate-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=DetectorConfig.surrogate_fraction, show_default=True,
              help="share of the model's test set (stratified) the attacker holds labelled")
@click.option("--seed", type=int, default=0, show_default=True, help="surrogate split and detector seed")
@click.option("--target-fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True, help="calibrated rule: clean false-positive rate to aim for")
@click.option("--fpr-confidence", type=click.FloatRange(0, 1, max_open=True), default=DetectorConfig.fpr_confidence,
              show_default=True, help="calibrated rule: FPR <= --target-fpr in this share of surrogate draws (0: on "
                                      "average only)")
@click.option("--tau", type=click.FloatRange(0, None), default=None,
              help="paper rule margin (default: the dataset's, 2 MNIST, 0.65 Fashion-MNIST)")
@click.option("--gan-epochs", type=click.IntRange(1, 10000), default=200, show_default=True,
              help="paper detector: DCGAN training epochs")
@data_dir_option
def fit_detector_cmd(model_dir, detector, out, surrogate_fraction, seed, target_fpr, fpr_confidence, tau, gan_epochs,
                     data_dir):
    """Attacker: fit a detector for a stolen model on the surrogate set and save it as an artifact for `serve`
    (the dataset is the model's own, from its metadata)."""
    from dnnpiracy.attack import check_cross_fitting, fit_detector, resolve_spec
    from dnnpiracy.attack.artifact import check_out_dir, model_meta_for, save_detector
    from dnnpiracy.config import paper_tau
    from dnnpiracy.data import load_dataset, make_splits
    from dnnpiracy.models import arch_info
    from dnnpiracy.training import load_model
    check_out_dir(out)                       # everything that can be checked before the fit is
    path = _model_file(model_dir)
    model, meta = load_model(path)
    if not meta.get("dataset"):
        raise click.ClickException(f"{path.with_suffix('.json')} names no dataset")
    spec = resolve_spec(detector, meta["dataset"])
    ds = load_dataset(meta["dataset"], data_dir)
    splits = make_splits(ds.test_y, surrogate_fraction, seed)
    sur = splits.surrogate_idx
    if spec.rule == "calibrated":
        check_cross_fitting(ds.test_y[sur])
    cfg = DetectorConfig(detector=detector, surrogate_fraction=surrogate_fraction, target_fpr=target_fpr,
                         fpr_confidence=fpr_confidence or None, tau=tau, gan=GanConfig(epochs=gan_epochs), seed=seed)
    tau = tau if tau is not None else paper_tau(ds.name)
    info = arch_info(meta["arch"], meta.get("stem", "imagenet"))
    click.echo(f"fitting detector {detector!r} on {len(sur)} surrogate inputs of {ds.name}", err=True)
    det = fit_detector(model, info, ds.test_x[sur], ds.test_y[sur], cfg, tau, ds.num_classes, dataset=ds.name)
    det = replace(det, fit_info={**det.fit_info, "dataset": ds.name, "surrogate_fraction": surrogate_fraction,
                                 "split_seed": seed, "n_surrogate": int(len(sur))})
    save_detector(det, out, model_meta_for(path), model)
    click.echo(json.dumps({"detector": det.name, "rule": det.spec.rule, "thresholds": det.thresholds.tolist(),
                           "fit_seconds": round(det.fit_info.get("fit_seconds", 0.0), 3),
                           "n_surrogate": int(len(sur))}, indent=2))
    click.echo(f"wrote {out}")


# ------------------------------------------------------------------------------------------------------ serve
def build_service(model_dir: str, detector_dir: str | None, bare: bool = False, strategy: str = "uniform-other",
                  seed: int = 0, max_batch: int = 256, batch_window_ms: float = 5.0, max_body_mb: float = 8.0):
    """The FastAPI app for a model folder and a detector artifact: the pirated classifier, or with ``bare`` the
    model alone (the detector, when given, is still loaded and checked against the model)."""
    import torch

    from dnnpiracy.attack import PiratedClassifier
    from dnnpiracy.serve import create_app
    from dnnpiracy.training import predict_labels
    if not bare and detector_dir is None:
        raise click.UsageError("--detector is required unless --bare is given")
    model, meta, _facts, det = _load_served(model_dir, detector_dir)
    warm = torch.zeros(1, 1, 28, 28)
    if bare:
        def predict(x):
            return predict_labels(model, x, batch_size=max(max_batch, 1))
        predict(warm)
    else:
        pirate = PiratedClassifier(det, strategy, seed)
        det.inspect(warm)          # warm-up without drawing from the pirate's generator
        predict = pirate.predict
    return create_app(predict, max_batch=max_batch, batch_window_ms=batch_window_ms,
                      max_body_bytes=int(max_body_mb * 2**20), num_classes=int(meta.get("num_classes", 10)))


@main.command()
@click.option("--model", "model_dir", type=click.Path(exists=True), required=True,
              help="a model folder (model.safetensors) or file")
@click.option("--detector", "detector_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="a detector artifact (`dnnpiracy fit-detector`); required unless --bare")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on (0.0.0.0: every interface)")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="port to listen on")
@click.option("--bare", is_flag=True, help="serve the model's own answers (no detector): the baseline")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="uniform-other", show_default=True,
              help="label for flagged queries (runner-up is deterministic)")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the replacement labels")
@click.option("--max-batch", type=click.IntRange(1, 65536), default=256, show_default=True,
              help="most images per request, and per forward pass")
@click.option("--batch-window-ms", type=click.FloatRange(0, 10000), default=5.0, show_default=True,
              help="how long a batch waits for more requests")
@click.option("--max-body-mb", type=click.FloatRange(0, 4096, min_open=True), default=8.0, show_default=True,
              help="largest request body (413 above)")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="warning",
              show_default=True, help="uvicorn's log level")
def serve(model_dir, detector_dir, host, port, bare, strategy, seed, max_batch, batch_window_ms, max_body_mb,
          log_level):
    """Attacker: serve the pirated classifier (or with --bare the model alone) over HTTP: POST /v1/predict,
    GET /healthz, docs at /docs."""
    import uvicorn
    app = build_service(model_dir, detector_dir, bare, strategy, seed, max_batch, batch_window_ms, max_body_mb)
    what = "the bare model" if bare else f"the pirated classifier ({strategy})"
    click.echo(f"serving {what} on http://{host}:{port} (docs at /docs)", err=True)
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                                  timeout_graceful_shutdown=5)).run()


# ------------------------------------------------------------------------------------------- verify --url
def verify_url(url: str, triggers: str, significance: float, as_json: bool) -> None:
    from dnnpiracy.serve.client import ServiceClient, ServiceError
    from dnnpiracy.watermark import load_trigger_set, verification_chance
    from dnnpiracy.watermark import verify as verify_fn
    ts = load_trigger_set(triggers)
    try:
        with ServiceClient(url) as client:
            num_classes = client.num_classes()
            v = verify_fn(client.predict, ts.images, ts.labels, num_classes, significance,
                          verification_chance(ts.config, num_classes))
    except ServiceError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    echo_verification(v, num_classes, significance, as_json)


def _extend_verify() -> None:
    """Give the existing `verify` command a --url: the suspect is then a served black box, queried over HTTP (in
    requests of at most the server's max batch); without --url it behaves exactly as before.  Exactly one of
    --model and --url."""
    cmd = main.commands["verify"]
    if any(p.name == "url" for p in cmd.params):
        return
    original = cmd.callback
    for p in cmd.params:
        if p.name == "model_dir":
            p.required = False
            p.help = (p.help or "") + " (or --url)"
    cmd.params.insert(1, click.Option(["--url"], default=None, metavar="URL",
                                      help="the suspect as a served black box, e.g. http://127.0.0.1:8000 "
                                           "(instead of --model)"))

    def callback(model_dir=None, url=None, **kwargs):
        ctx = click.get_current_context()
        if (model_dir is None) == (url is None):
            raise click.UsageError("give exactly one of --model (a model file or folder) and --url (a served "
                                   "model)", ctx)
        if url is None:
            return original(model_dir=model_dir, **kwargs)
        return verify_url(url, **kwargs)

    cmd.callback = callback
    cmd.help = (cmd.help or "") + "  With --url, query a served model (`dnnpiracy serve`) over HTTP instead."


_extend_verify()

"""``fusionkit demo``: the page a clinician can try, served by the real command and driven in Chromium.

One tiny run is trained once (in process, synthetic data). ``fusionkit demo RUN`` is started in a
subprocess on a free port, with its own ``TMPDIR`` so that where uploads go (and that they are gone
when the server stops) can be checked. Headless Chromium (Debian's ``/usr/bin/chromium``, driven by
Playwright, as in ``tests/test_site.py``) uploads photos, fills the form and clicks **Predict**; the
probabilities read off the page must equal :meth:`FusionPipeline.predict` on the same inputs to the
digits shown.

Without Chromium, Playwright or Gradio the browser tests skip and say why; ``.ci/run`` sets
``FUSIONKIT_REQUIRE_BROWSER=1``, under which a missing one fails instead.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from train_helpers import tiny_run_config, train_carried_run

import fusionkit as fk
from fusionkit.data.schema import CLASS_FULL_NAMES
from fusionkit.demo.lesion import form_fields, metadata_record, read_photo
from fusionkit.errors import DataError, MissingExtraError

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("FUSIONKIT_CHROMIUM", "/usr/bin/chromium")
REQUIRED = os.environ.get("FUSIONKIT_REQUIRE_BROWSER") == "1"  # .ci/run sets it: there a skip is a failure
FORM = {"age_approx": "55", "sex": "female", "site": "trunk", "skin_tone_class": "2"}
"""What the browser enters in the form, as the metadata columns the pipeline reads."""

pytestmark = [pytest.mark.slow]


def _browser_or_skip() -> object:
    """Playwright's sync API, or a skip (a failure under FUSIONKIT_REQUIRE_BROWSER=1) saying what is missing."""
    missing = None
    if not Path(CHROMIUM).is_file():
        missing = f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)"
    else:
        try:
            import gradio  # noqa: F401
            from playwright import sync_api
        except ImportError as exc:
            missing = f"{exc.name} is not installed (the dev extra has playwright and gradio)"
    if missing:
        if REQUIRED:
            pytest.fail(missing, pytrace=False)
        pytest.skip(missing)
    return sync_api


# -- the model and the server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    config = tiny_run_config(root / "cache", epochs=1, n_lesions=40)
    train_carried_run(config, root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def pipe(run_dir: Path) -> fk.FusionPipeline:
    return fk.FusionPipeline.from_run(run_dir, device="cpu")


@pytest.fixture(scope="module")
def lesion(run_dir: Path) -> dict[str, Path]:
    """The two JPEGs of one lesion of the run's data."""
    data = run_dir / "synthetic"
    with (data / "MILK10k_Training_Metadata.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    first = sorted({r["lesion_id"] for r in rows})[0]
    paths = {
        r["image_type"]: next((data / "MILK10k_Training_Input").rglob(f"{r['isic_id']}.jpg"))
        for r in rows
        if r["lesion_id"] == first
    }
    return {"derm": paths["dermoscopic"], "clinical": paths["clinical: close-up"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(run_dir: Path, tmp_path_factory) -> Iterator[dict[str, object]]:
    """``fusionkit demo RUN --port N`` in a subprocess; on teardown, SIGTERM and a check that its
    temporary folder (uploads, example lesions) is gone."""
    _browser_or_skip()
    tmp = tmp_path_factory.mktemp("server-tmp")
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "TMPDIR": str(tmp),
    }
    env.pop("GRADIO_TEMP_DIR", None)
    log = tmp_path_factory.mktemp("server-log") / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fusionkit.cli", "demo", str(run_dir), "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"fusionkit demo exited with {proc.returncode}:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"fusionkit demo did not answer on {url}:\n{log.read_text()}"
            time.sleep(0.5)
        yield {"url": url, "proc": proc, "tmp": tmp, "log": log}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    left = sorted(p.name for p in tmp.glob("fusionkit-*"))
    assert not left, f"the demo left its temporary folders behind: {left}"
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="module")
def browser(server) -> Iterator[object]:
    sync_api = _browser_or_skip()
    with sync_api.sync_playwright() as p:  # type: ignore[attr-defined]
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, server) -> Iterator[object]:
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(str(server["url"]), wait_until="networkidle")
    yield page
    page.close()


# -- driving the page --------------------------------------------------------------------------------


def _upload(page, modality: str, path: Path) -> None:
    page.locator(f"#{modality} input[type=file]").set_input_files(str(path))
    page.locator(f"#{modality}").get_by_text(path.stem).first.wait_for(timeout=30_000)  # uploaded (the name shows)


def _fill_form(page) -> None:
    page.locator("#age input").fill(FORM["age_approx"])
    page.locator("#sex").get_by_text(FORM["sex"], exact=True).click()
    page.locator("#site input").click()
    page.get_by_role("option", name=FORM["site"], exact=True).click()
    page.locator("#tone").get_by_text(FORM["skin_tone_class"], exact=True).click()


def _predict(page, *, expect: str = "any") -> None:
    """Click Predict and wait for the answer: a probability table, a message, or either."""
    table = "document.querySelector('#probs table')"
    message = "(document.querySelector('#message')?.innerText.includes('Cannot predict'))"
    done = {"table": table, "message": message, "any": f"{table} || {message}"}[expect]
    page.locator("#predict").click()
    page.wait_for_function(f"() => Boolean({done})", timeout=60_000)


def _shown_probabilities(page) -> list[tuple[str, str, str]]:
    rows = page.locator("#probs table tbody tr").all()
    return [tuple(cell.inner_text().strip() for cell in row.locator("td").all()) for row in rows]


def _form_metadata(pipe: fk.FusionPipeline, photos: list[str]) -> dict[str, str]:
    """The metadata the page builds from FORM (blank MONET scores left out, so they are imputed)."""
    return metadata_record(
        form_fields(pipe),
        photos=photos,
        age=FORM["age_approx"],
        sex=FORM["sex"],
        site=FORM["site"],
        skin_tone=FORM["skin_tone_class"],
    )


def _assert_same_probabilities(shown: list[tuple[str, str, str]], expected: fk.LesionPrediction) -> None:
    names = [row[0] for row in shown]
    assert sorted(names) == sorted(expected.probs), shown
    values = [float(row[2]) for row in shown]
    assert values == sorted(values, reverse=True), "the classes are not sorted by probability"
    for code, full, value in shown:
        assert full == CLASS_FULL_NAMES[code]
        assert value == f"{expected.probs[code]:.4f}", (code, value, expected.probs[code])


# -- the tests ---------------------------------------------------------------------------------------


@pytest.mark.subprocess
@pytest.mark.browser
def test_two_photos_and_the_form_give_the_pipelines_probabilities(page, pipe, lesion, server) -> None:
    assert "Research model, not a diagnosis" in page.locator("#note").inner_text()
    _upload(page, "derm", lesion["derm"])
    _upload(page, "clinical", lesion["clinical"])
    _fill_form(page)
    _predict(page, expect="table")

    expected = pipe.predict(
        derm=lesion["derm"],
        clinical=lesion["clinical"],
        metadata=_form_metadata(pipe, ["derm", "clinical"]),
        impute=True,
    )
    shown = _shown_probabilities(page)
    assert len(shown) == len(pipe.class_names) == 11
    _assert_same_probabilities(shown, expected)
    # the decision rule's class, the gate weights (ADF), what was imputed, a Grad-CAM per photo
    decision = page.locator("#decision").inner_text()
    assert f"decision rule {pipe.decision.rule}" in decision
    for c in expected.classes or [expected.top]:
        assert c in decision
    weights = page.locator("#weights").inner_text()
    assert "How much each input counted" in weights
    assert expected.weights is not None
    for key, value in expected.weights.items():
        assert re.search(rf"{key}\s+{re.escape(f'{value:.1%}')}", weights), (key, value, weights)
    notes = page.locator("#inputs").inner_text()
    assert "derm.MONET_hair" in notes and "Imputed from the training statistics" in notes
    assert "age_approx" not in notes  # given in the form, not imputed
    for m in ("derm", "clinical"):
        assert page.locator(f"#gradcam-{m} img").count() == 1, f"no Grad-CAM overlay for {m}"
    # the uploads went to the server's own temporary folder, nowhere else
    uploads = list(Path(server["tmp"]).glob(f"fusionkit-demo-*/uploads/**/{lesion['derm'].name}"))
    assert uploads, "the upload is not in the demo's temporary folder"


@pytest.mark.subprocess
@pytest.mark.browser
def test_a_clinical_photo_left_out_is_an_absent_modality(page, pipe, lesion) -> None:
    _upload(page, "derm", lesion["derm"])
    _fill_form(page)
    _predict(page, expect="table")

    expected = pipe.predict(derm=lesion["derm"], metadata=_form_metadata(pipe, ["derm"]), impute=True)
    assert expected.missing == ["clinical"]
    _assert_same_probabilities(_shown_probabilities(page), expected)
    assert "Clinical close-up: absent" in page.locator("#inputs").inner_text()
    assert page.locator("#gradcam-derm img").count() == 1
    assert page.locator("#gradcam-clinical img").count() == 0


@pytest.mark.subprocess
@pytest.mark.browser
def test_a_text_file_or_corrupt_jpeg_is_a_message_and_the_server_keeps_serving(page, lesion, tmp_path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a photo\n")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(lesion["clinical"].read_bytes()[:200])
    for bad in (text, broken):
        page.reload(wait_until="networkidle")
        _upload(page, "derm", bad)
        _upload(page, "clinical", lesion["clinical"])
        _predict(page, expect="message")
        message = page.locator("#message").inner_text()
        assert "Dermoscopic photo: not a readable image" in message, message
        assert "Traceback" not in page.content()
        assert page.locator("#probs table").count() == 0
    # the same page, a good photo now: the server still answers
    page.locator("#derm button[aria-label='Clear']").first.click()
    _upload(page, "derm", lesion["derm"])
    _predict(page, expect="table")
    assert len(_shown_probabilities(page)) == 11
    assert page.locator("#message").inner_text().strip() == ""


@pytest.mark.subprocess
@pytest.mark.browser
def test_an_example_case_predicts_with_one_click(page) -> None:
    page.locator("#examples").get_by_text("Generated lesion 1").click()
    page.locator("#derm").get_by_text(re.compile(r"ISIC_\d+")).first.wait_for(timeout=30_000)
    _predict(page, expect="table")
    assert len(_shown_probabilities(page)) == 11


# -- without a browser ---------------------------------------------------------------------------------


def test_a_file_that_is_not_an_image_or_too_big_is_one_line_naming_the_input(tmp_path: Path, monkeypatch) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo\n")
    with pytest.raises(DataError, match=r"^Clinical close-up: not a readable image; upload a JPEG or PNG photo$"):
        read_photo(text, name="Clinical close-up")
    good = tmp_path / "ok.png"
    Image.new("RGB", (8, 6), (200, 10, 10)).save(good)
    assert read_photo(good, name="x").size == (8, 6)
    assert read_photo(None, name="x") is None
    monkeypatch.setattr("fusionkit.demo.lesion.MAX_UPLOAD_BYTES", good.stat().st_size - 1)
    with pytest.raises(DataError, match=r"^x: the file is .* MiB; at most"):
        read_photo(good, name="x")


def test_blank_form_fields_are_left_out_to_be_imputed(pipe: fk.FusionPipeline) -> None:
    fields = form_fields(pipe)
    assert fields.photos == ("derm", "clinical") and fields.monet
    record = metadata_record(fields, photos=["derm"], age=None, sex="", site="hand", skin_tone=3, monet={})
    assert record["site"] == "hand" and record["skin_tone_class"] == "3"
    assert "age_approx" not in record and "sex" not in record
    assert not any("MONET" in k for k in record) and not any(k.startswith("clinical.") for k in record)


def test_without_gradio_the_demo_names_its_extra(monkeypatch, pipe: fk.FusionPipeline) -> None:
    from fusionkit.demo import build_demo

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    with pytest.raises(MissingExtraError, match=re.escape("pip install 'jiadf-fusion[demo]'")):
        build_demo(pipe)


@pytest.mark.subprocess
def test_the_command_binds_localhost_by_default_and_refuses_a_bad_model(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "fusionkit.cli", "demo"]
    helped = subprocess.run([*command, "-h"], env=env, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0, helped.stderr
    assert "--host" in helped.stdout and "127.0.0.1" in helped.stdout and "--share" in helped.stdout
    bad = subprocess.run([*command, str(tmp_path / "nothing")], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.startswith("fusionkit: error:") and len(bad.stderr.strip().splitlines()) == 1, bad.stderr

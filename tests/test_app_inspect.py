"""Inspect page (AppTest): headline numbers, the four charts, colouring, sending a confusion cell to Review."""

from __future__ import annotations

import base64
import json

import numpy as np
from fixtures_runs import hold_worker, open_page

from ui import review


def charts_by_key(at) -> dict[str, dict]:
    return {c.key: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def typed_array(spec: dict | list) -> np.ndarray:
    """Plotly's JSON for numpy arrays ({"dtype", "bdata", "shape"}) back to an array."""
    if isinstance(spec, list):
        return np.asarray(spec)
    shape = tuple(int(n) for n in str(spec.get("shape", "-1")).split(","))
    return np.frombuffer(base64.b64decode(spec["bdata"]), dtype=spec["dtype"]).reshape(shape)


def test_headline_numbers_and_four_charts(fake_run):
    at = open_page("inspect", run_id=fake_run.run_id)
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "30"
    assert metrics["Flagged"] == "9"
    assert at.metric[1].proto.delta == "30.0 %"
    assert (metrics["Precision"], metrics["Recall"], metrics["F1"], metrics["AUROC"]) == ("0.667", "1.000", "0.800",
                                                                                          "0.950")
    assert metrics["Exported labels right"] == "0.900"
    charts = charts_by_key(at)
    assert set(charts) == {"clean_noisy", "loss_histogram", "umap_given", "confusion"}
    bars = {t["name"]: t for t in charts["clean_noisy"]["data"]}
    assert set(bars) == {"clean", "flagged"}
    noise = at.dataframe[0].value
    assert noise["class"].tolist() == ["cat", "dog", "fox"]
    assert noise["noise_rate"].tolist() == [0.3, 0.3, 0.3]


def test_histogram_draws_both_components_and_the_threshold(fake_run):
    at = open_page("inspect", run_id=fake_run.run_id)
    spec = charts_by_key(at)["loss_histogram"]
    names = [t.get("name") for t in spec["data"]]
    assert names == ["images", "clean component", "noisy component"]
    assert spec["layout"]["shapes"][0]["x0"] == 0.55  # loss_threshold from split.json
    assert spec["layout"]["yaxis"]["title"]["text"] == "images"  # no spike: plain counts


def test_a_spike_of_clean_losses_puts_the_histogram_on_a_log_scale(fake_run):
    frame = fake_run.samples.copy()
    frame.loc[frame["flagged"] == 0, "loss_norm"] = 0.0  # every clean image in the first bin, as on the sample
    frame.to_csv(fake_run.run.samples, index=False)
    at = open_page("inspect", run_id=fake_run.run_id)
    layout = charts_by_key(at)["loss_histogram"]["layout"]
    assert (layout["yaxis"]["type"], layout["yaxis"]["title"]["text"]) == ("log", "images (log scale)")


def test_umap_is_webgl_and_recolours(fake_run):
    at = open_page("inspect", run_id=fake_run.run_id)
    traces = charts_by_key(at)["umap_given"]["data"]
    assert {t["type"] for t in traces} == {"scattergl"}
    assert [t["name"] for t in traces] == ["cat", "dog", "fox"]
    assert "%{hovertext}" in traces[0]["hovertemplate"] and "%{customdata:.2f}" in traces[0]["hovertemplate"]
    assert traces[0]["hovertext"][0].startswith("<b>") and "<br>given: cat" in traces[0]["hovertext"][0]
    at.radio(key="umap_colour").set_value("clean").run()
    traces = charts_by_key(at)["umap_clean"]["data"]
    assert len(traces) == 1 and traces[0]["marker"]["colorscale"]


def test_without_a_map_the_page_says_so(fake_run):
    fake_run.run.umap.unlink()
    at = open_page("inspect", run_id=fake_run.run_id)
    assert any("no embedding map" in i.value for i in at.info)
    assert len(at.get("plotly_chart")) == 3


def test_confusion_cell_opens_its_images_in_review(fake_run):
    at = open_page("inspect", run_id=fake_run.run_id)
    spec = charts_by_key(at)["confusion"]["data"][0]
    assert spec["type"] == "heatmap"
    assert typed_array(spec["customdata"]).tolist() == [[7, 3, 0], [0, 7, 3], [3, 0, 7]]
    # default pair: the biggest disagreement (given cat -> suggested dog, 3 images)
    assert (at.selectbox(key="cell_given").value, at.selectbox(key="cell_suggested").value) == ("cat", "dog")
    at.selectbox(key="cell_given").select("fox")
    at.selectbox(key="cell_suggested").select("cat").run()
    button = at.button(key="review_cell")
    assert button.label == "Review these 3 images"
    button.click().run()
    selection = review.load_selection(fake_run.run)
    expected = fake_run.samples.query("given_label == 'fox' and suggested_label == 'cat'")["path"].tolist()
    assert selection is not None and sorted(selection.paths) == sorted(expected)
    assert [t.value for t in at.title] == ["Review"]  # st.switch_page went to Review...
    assert at.radio(key="review_scope").value == "selection"  # ...showing the picked images


def test_a_run_still_training_has_no_evidence_yet(fake_run):
    fake_run.run.samples.unlink()
    fake_run.run.write_status(state="running", pid=__import__("os").getpid())
    worker = hold_worker(fake_run.run)
    at = open_page("inspect", run_id=fake_run.run_id)
    assert any("still training" in i.value for i in at.info)
    worker.close()


def test_inspect_says_how_right_the_labels_are_and_why_nothing_changes_by_itself(fake_run):
    at = open_page("inspect", run_id=fake_run.run_id)
    assert any(i.value.startswith("Labels right: given 90.0% → exported 80.0% (against the truth file)")
               for i in at.info)
    split = json.loads(fake_run.run.split.read_text())
    split.update(competence=0.55, min_competence=0.9)
    fake_run.run.split.write_text(json.dumps(split))
    at = open_page("inspect", run_id=fake_run.run_id)
    assert any("agrees with the labels 55% of the time (held out), below the 90%" in c.value for c in at.caption)
    assert any(c.value.startswith("With a model this unsure") for c in at.caption)


def test_a_competent_model_gets_no_rough_count_warning(fake_run):
    split = json.loads(fake_run.run.split.read_text())
    split.update(competence=0.95, min_competence=0.9)
    fake_run.run.split.write_text(json.dumps(split))
    at = open_page("inspect", run_id=fake_run.run_id)
    assert not at.exception
    assert not any("With a model this unsure" in c.value for c in at.caption)
    assert not any("No label changes by itself" in c.value for c in at.caption)

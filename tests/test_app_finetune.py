"""Fine-tune page (AppTest, jobs faked): decision counts, starting phase (b), before/after numbers."""

from __future__ import annotations

from fixtures_runs import open_page, write_phase_b

from engine.review.decisions import DecisionStore


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_counts_the_decisions_and_starts_phase_b(fake_run, fake_jobs):
    store = DecisionStore(fake_run.run.decisions)
    rows = fake_run.flagged
    store.decide(rows["path"][:2], "keep", "cat", source="t")
    store.decide(rows["path"][2:3], "discard", source="t")
    at = open_page("finetune", run_id=fake_run.run_id)
    assert not at.exception
    got = metrics(at)
    assert (got["Human decisions used"], got["Kept"], got["Relabeled"], got["Discarded"]) == ("3", "2", "0", "1")
    at.button(key="start_finetune").click().run()
    assert fake_jobs.names() == ["start_finetune"]
    assert fake_jobs.calls[0][1][0] == fake_run.run.path
    assert any("(fine-tuning)" in m.value for m in at.markdown)  # the live panel of phase (b)


def test_without_decisions_fine_tuning_is_not_offered(fake_run, fake_jobs):
    at = open_page("finetune", run_id=fake_run.run_id)
    assert not at.exception
    assert not [b for b in at.button if b.key == "start_finetune"]
    assert any("Fine-tuning starts once you have reviewed some flagged images" in i.value for i in at.info)
    DecisionStore(fake_run.run.decisions).decide(fake_run.flagged["path"][:1], "skip", source="t")
    at = open_page("finetune", run_id=fake_run.run_id)  # a skip is no decision
    assert not [b for b in at.button if b.key == "start_finetune"]


def test_before_and_after(fake_run, fake_jobs):
    write_phase_b(fake_run, changed=2)
    DecisionStore(fake_run.run.decisions).decide(fake_run.flagged["path"][:1], "keep", "cat", source="t")
    at = open_page("finetune", run_id=fake_run.run_id)
    got = metrics(at)
    assert (got["Flagged before"], got["Flagged after"], got["Suggestions changed"]) == ("9", "7", "2")
    table = at.dataframe[0].value
    assert table.loc["F1"].tolist() == ["0.800", "0.900"]
    assert table.loc["Given labels right"].tolist() == ["0.800", "0.800"]
    assert table.index.tolist() == ["Precision", "Recall", "F1", "AUROC", "Exported labels right",
                                    "Predicted labels right", "Given labels right"]  # no raw metrics.json names
    assert at.button(key="start_finetune").label == "Fine-tune again with the current decisions"


def test_says_whether_the_fine_tuned_model_passed_its_check(fake_run, fake_jobs):
    from engine.runs.atomic import atomic_write_json

    write_phase_b(fake_run, changed=2)
    DecisionStore(fake_run.run.decisions).decide(fake_run.flagged["path"][:1], "keep", "cat", source="t")
    at = open_page("finetune", run_id=fake_run.run_id)
    assert any("are held out to check the result" in c.value for c in at.caption)  # before the button
    assert any("With 1 decision the check cannot pass yet: review at least 20 images" in c.value for c in at.caption)
    assert not at.warning and not at.success  # fine-tuned before the check existed: nothing to say
    check = {"n": 40, "a_right": 24, "b_right": 20, "fixes": 3, "breaks": 7, "p_value": 0.9453, "kept": False,
             "enabled": True}
    fake_run.run.finetune_meta.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(fake_run.run.finetune_meta, {"fingerprint": "x", "check": check})
    at = open_page("finetune", run_id=fake_run.run_id)
    assert at.dataframe[0].value.columns.tolist() == ["before (phase a)", "after (phase a + your decisions)"]
    assert [w.value for w in at.warning] == [
        "Fine-tuning not kept: on 40 reviewed images it did not train on, fine-tuning agrees with you on 20 and "
        "phase (a) on 24, not clearly better, so the run keeps phase (a)'s model with your decisions."]
    atomic_write_json(fake_run.run.finetune_meta, {"check": {**check, "b_right": 31, "fixes": 9, "breaks": 2,
                                                             "p_value": 0.0327, "kept": True}})
    at = open_page("finetune", run_id=fake_run.run_id)
    assert at.success[0].value.startswith("Fine-tuning kept: on 40 reviewed images") and not at.warning

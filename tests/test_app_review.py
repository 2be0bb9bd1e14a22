"""Review page (AppTest): queue order, every action reaches the decision store, batch, undo, keyboard, paging."""

from __future__ import annotations

import re
from pathlib import Path

from fixtures_runs import open_page, write_fake_run

from engine.review.decisions import DecisionStore
from ui import review


def card_indices(at) -> list[int]:
    """samples.csv indices of the cards on screen, in reading order (card_<slot> containers, checkbox keys)."""
    keys = {block.key: block for block in at.container if block.key and block.key.startswith("card_")}
    cards = [keys[f"card_{slot}"] for slot in range(len(keys))]
    return [int(card.checkbox[0].key.removeprefix("sel_")) for card in cards]


def progress_text(at) -> str:
    return at.get("progress")[0].proto.text


def focused_line(at) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("**Focused card"))


def test_shows_the_flagged_images_most_suspicious_first(fake_run):
    at = open_page("review", run_id=fake_run.run_id)
    assert not at.exception
    expected = fake_run.flagged["index"].tolist()
    assert len(expected) == 9
    assert card_indices(at) == expected
    assert progress_text(at) == "0 / 9 flagged images reviewed"
    assert len(at.get("imgs")) == 9 or len(at.image) == 9


def test_keep_on_a_card_writes_keep_with_the_given_label(fake_run):
    at = open_page("review", run_id=fake_run.run_id)
    row = fake_run.flagged.iloc[2]
    at.button(key=f"keep_{row['index']}").click().run()
    decision = DecisionStore(fake_run.run.decisions).get(row["path"])
    assert decision is not None
    assert (decision.action, decision.label) == ("keep", row["given_label"])
    assert decision.source and decision.source.startswith("browser-")
    assert progress_text(at) == "1 / 9 flagged images reviewed"
    # a click focuses the card after the one decided (card 3 -> card 4), like the keyboard does
    assert focused_line(at).startswith(f"**Focused card 4 of 9:** `{Path(fake_run.flagged.iloc[3]['path']).name}`")


def test_accept_writes_relabel_with_the_suggested_label(fake_run):
    at = open_page("review", run_id=fake_run.run_id)
    row = fake_run.flagged.iloc[0]
    at.button(key=f"accept_{row['index']}").click().run()
    decision = DecisionStore(fake_run.run.decisions).get(row["path"])
    assert (decision.action, decision.label) == ("relabel", row["suggested_label"])
    assert row["suggested_label"] != row["given_label"]


def test_relabel_to_any_class_and_discard(fake_run):
    at = open_page("review", run_id=fake_run.run_id)
    first, second = fake_run.flagged.iloc[0], fake_run.flagged.iloc[1]
    other = next(c for c in ("cat", "dog", "fox") if c not in (first["given_label"], first["suggested_label"]))
    at.selectbox(key=f"relabel_{first['index']}").select(other).run()
    at.button(key=f"discard_{second['index']}").click().run()
    store = DecisionStore(fake_run.run.decisions)
    assert (store.get(first["path"]).action, store.get(first["path"]).label) == ("relabel", other)
    assert (store.get(second["path"]).action, store.get(second["path"]).label) == ("discard", None)
    assert at.selectbox(key=f"relabel_{first['index']}").value is None  # the picker resets for the next image
    assert progress_text(at) == "2 / 9 flagged images reviewed"


def test_keyboard_keep_and_accept_act_on_the_focused_card_and_move_on(fake_run):
    at = open_page("review", run_id=fake_run.run_id)
    order = fake_run.flagged
    assert at.button(key="kb_keep").proto.shortcut == "k"
    assert at.button(key="kb_accept").proto.shortcut == "a"
    at.button(key="kb_keep").click().run()  # K
    at.button(key="kb_accept").click().run()  # A
    store = DecisionStore(fake_run.run.decisions)
    first, second = order.iloc[0], order.iloc[1]
    assert (store.get(first["path"]).action, store.get(first["path"]).label) == ("keep", first["given_label"])
    assert (store.get(second["path"]).action, store.get(second["path"]).label) == ("relabel", second["suggested_label"])
    assert focused_line(at).startswith("**Focused card 3 of 9")
    at.button(key="kb_prev").click().run()  # J
    assert focused_line(at).startswith("**Focused card 2 of 9")
    at.button(key="kb_class_3").click().run()  # 3 -> third class, "fox"
    assert store.get(second["path"]).label == "fox"
    assert store.count() == 2


def test_batch_discard_writes_every_selected_image_and_undo_restores(fake_run):
    store = DecisionStore(fake_run.run.decisions)
    keep_row = fake_run.flagged.iloc[0]
    store.decide([keep_row["path"]], "keep", keep_row["given_label"], source="other-tab")
    at = open_page("review", run_id=fake_run.run_id)
    at.toggle(key="review_show_reviewed").set_value(True).run()  # the image kept elsewhere shows, at the end
    chosen = fake_run.flagged.iloc[:4]
    for index in chosen["index"]:
        at.checkbox(key=f"sel_{index}").check()
    at.run()
    at.button(key="batch_discard").click().run()
    current = store.all()
    assert {p for p, d in current.items() if d.action == "discard"} == set(chosen["path"])
    assert progress_text(at) == "4 / 9 flagged images reviewed"
    assert not any(at.checkbox(key=f"sel_{i}").value for i in chosen["index"])  # selection cleared
    at.button(key="kb_undo").click().run()
    current = store.all()
    # the whole batch is undone; the image another tab had kept is back to "keep", not lost
    assert set(current) == {keep_row["path"]}
    assert current[keep_row["path"]].action == "keep"
    assert progress_text(at) == "1 / 9 flagged images reviewed"
    assert any("Undone" in i.value for i in at.info)


def test_undo_keeps_a_later_decision_from_another_tab(fake_run):
    store = DecisionStore(fake_run.run.decisions)
    chosen = fake_run.flagged.iloc[:3]
    at = open_page("review", run_id=fake_run.run_id)
    for index in chosen["index"]:
        at.checkbox(key=f"sel_{index}").check()
    at.run()
    at.button(key="batch_discard").click().run()
    later = chosen["path"].iloc[1]
    store.decide([later], "relabel", "fox", source="browser-other-tab")  # another tab, after this batch
    at.button(key="kb_undo").click().run()
    now = store.all()
    assert set(now) == {later}  # this tab's two other discards are undone ...
    assert (now[later].action, now[later].label) == ("relabel", "fox")  # ... the other tab's decision stands
    assert any(i.value == "Undone: discarded 3 images. 1 image was not put back: another tab "
                          "changed it since." for i in at.info)


def test_undo_steps_back_through_several_actions(fake_run):
    at = open_page("review", run_id=fake_run.run_id)
    row = fake_run.flagged.iloc[0]
    at.button(key=f"keep_{row['index']}").click().run()
    at.button(key=f"discard_{row['index']}").click().run()
    store = DecisionStore(fake_run.run.decisions)
    assert store.get(row["path"]).action == "discard"
    at.button(key="kb_undo").click().run()
    assert store.get(row["path"]).action == "keep"
    at.button(key="kb_undo").click().run()
    assert store.get(row["path"]) is None
    at.button(key="kb_undo").click().run()
    assert any("Nothing to undo" in i.value for i in at.info)
    assert len(store.log(row["path"])) == 4  # two decisions, two undos: all in the audit trail


def test_select_all_on_page_then_accept(fake_run):
    at = open_page("review", run_id=fake_run.run_id)
    at.button(key="select_all").click().run()
    assert all(at.checkbox(key=f"sel_{i}").value for i in fake_run.flagged["index"])
    at.button(key="batch_accept").click().run()
    store = DecisionStore(fake_run.run.decisions).all()
    assert len(store) == 9
    assert all(store[p].label == s for p, s in zip(fake_run.flagged["path"], fake_run.flagged["suggested_label"],
                                                   strict=True))
    assert progress_text(at) == "9 / 9 flagged images reviewed"


def test_filters_by_given_class_and_status(fake_run):
    at = open_page("review", run_id=fake_run.run_id)
    first = fake_run.flagged.iloc[0]
    at.button(key=f"keep_{first['index']}").click().run()
    at.multiselect(key="filter_status").select("not reviewed").run()
    assert first["index"] not in card_indices(at)
    assert len(card_indices(at)) == 8
    at.multiselect(key="filter_given").select("dog").run()
    expected = fake_run.flagged[(fake_run.flagged["given_label"] == "dog")]["index"].tolist()
    assert card_indices(at) == [i for i in expected if i != first["index"]]


def test_decisions_survive_a_new_session(fake_run):
    at = open_page("review", run_id=fake_run.run_id)
    row = fake_run.flagged.iloc[1]
    at.button(key=f"discard_{row['index']}").click().run()
    badges = [m.value for m in at.markdown if Path(row["path"]).name in m.value and "discarded" in m.value]
    assert badges  # in this tab the decided card stays in place, with its badge
    again = open_page("review", run_id=fake_run.run_id)  # a refresh: new session, same URL
    assert progress_text(again) == "1 / 9 flagged images reviewed"
    assert row["index"] not in card_indices(again)  # answered: out of the queue ...
    assert len(card_indices(again)) == 8
    again.toggle(key="review_show_reviewed").set_value(True).run()  # ... unless asked for, at its end
    assert card_indices(again)[-1] == row["index"]
    badges = [m.value for m in again.markdown if Path(row["path"]).name in m.value and "discarded" in m.value]
    assert badges


def test_selection_from_inspect_is_reviewed_even_if_not_flagged(fake_run):
    clean_rows = fake_run.samples[fake_run.samples["flagged"] == 0].iloc[:2]
    review.save_selection(fake_run.run, clean_rows["path"].tolist(), "2 images picked on the map")
    at = open_page("review", run_id=fake_run.run_id)
    assert at.radio(key="review_scope").value == "selection"
    assert sorted(card_indices(at)) == sorted(clean_rows["index"].tolist())
    at.button(key=f"keep_{clean_rows['index'].iloc[0]}").click().run()
    assert DecisionStore(fake_run.run.decisions).get(clean_rows["path"].iloc[0]).action == "keep"
    at.radio(key="review_scope").set_value("flagged").run()
    assert len(card_indices(at)) == 9


def test_pages_of_24_with_page_buttons(app_workspace, fake_jobs):
    fake = write_fake_run(app_workspace / "runs", per_class=12)  # 3 flagged per class...
    frame = fake.samples
    frame.loc[:, "flagged"] = 1  # ...made 36 flagged, so there are two pages
    frame.to_csv(fake.run.samples, index=False)
    at = open_page("review", run_id=fake.run_id)
    assert len(card_indices(at)) == 24
    assert re.search(r"Page 1 of 2", " ".join(m.value for m in at.markdown))
    at.button(key="page_next").click().run()
    assert len(card_indices(at)) == 12
    assert focused_line(at).startswith("**Focused card 25 of 36")
    at.button(key="page_prev").click().run()
    assert len(card_indices(at)) == 24


def test_no_run_says_where_to_start(app_workspace, fake_jobs):
    at = open_page("review")
    assert not at.exception
    assert any("No run selected — start one on Train" in i.value for i in at.info)


# ----------------------------------------------------------------------------- class keys, undo focus, what is shown

DIGITS = tuple(str(d) for d in range(10))


def key_row(at) -> dict[str, str]:
    """{shortcut key: button label} of the class key row."""
    return {b.proto.shortcut: b.label for b in at.button if b.key and b.key.startswith("kb_class_")}


def test_digit_keys_name_digit_classes_and_every_digit_has_one(app_workspace, fake_jobs):
    fake = write_fake_run(app_workspace / "runs", classes=DIGITS, per_class=4)
    at = open_page("review", run_id=fake.run_id)
    assert key_row(at) == {d: f"{d} · {d}" for d in DIGITS}  # "3 · 3", not "3 · 2"; 0 and 9 have keys too
    first = fake.flagged.iloc[0]
    at.button(key="kb_class_3").click().run()  # the key 3
    assert DecisionStore(fake.run.decisions).get(first["path"]).label == "3"
    second = fake.flagged.iloc[1]
    at.button(key="kb_class_9").click().run()
    assert DecisionStore(fake.run.decisions).get(second["path"]).label == "9"
    assert any("**digit keys** relabel to the class of that digit" in c.value for c in at.caption)


def test_named_classes_take_keys_1_to_9_then_0_and_a_search_box_beyond(app_workspace, fake_jobs):
    names = ("tench", "springer", "cassette", "chainsaw", "church", "horn", "truck", "pump", "golf", "chute", "owl")
    fake = write_fake_run(app_workspace / "runs", classes=names, per_class=4)
    at = open_page("review", run_id=fake.run_id)
    assert key_row(at) == {**{str(i + 1): f"{i + 1} · {n}" for i, n in enumerate(names[:9])}, "0": "0 · chute"}
    assert any("**1–9, 0** relabel to the class named on the key" in c.value for c in at.caption)
    first = fake.flagged.iloc[0]
    at.button(key="kb_class_0").click().run()
    assert DecisionStore(fake.run.decisions).get(first["path"]).label == "chute"
    second = fake.flagged.iloc[1]
    at.selectbox(key="kb_relabel").select("owl").run()  # the 11th class: typed into the search box
    assert DecisionStore(fake.run.decisions).get(second["path"]).label == "owl"
    assert at.selectbox(key="kb_relabel").value is None


def test_undo_brings_the_focus_back_to_the_undone_card(fake_run):
    at = open_page("review", run_id=fake_run.run_id)
    first, second = fake_run.flagged.iloc[0], fake_run.flagged.iloc[1]
    at.button(key="kb_accept").click().run()  # A
    assert focused_line(at).startswith("**Focused card 2 of 9")
    at.button(key="kb_undo").click().run()  # U
    assert focused_line(at).startswith(f"**Focused card 1 of 9:** `{Path(first['path']).name}`")
    at.button(key="kb_accept").click().run()  # A again: the undone card, not the next one
    store = DecisionStore(fake_run.run.decisions)
    assert store.get(first["path"]).label == first["suggested_label"]
    assert store.get(second["path"]) is None


def test_undo_of_a_batch_focuses_its_first_card(fake_run):
    at = open_page("review", run_id=fake_run.run_id)
    chosen = fake_run.flagged.iloc[3:6]
    for index in chosen["index"]:
        at.checkbox(key=f"sel_{index}").check()
    at.run()
    at.button(key="batch_discard").click().run()
    at.button(key="kb_next").click().run()
    at.button(key="kb_undo").click().run()
    assert focused_line(at).startswith(f"**Focused card 4 of 9:** `{Path(chosen['path'].iloc[0]).name}`")


def test_the_show_choice_survives_a_refresh(fake_run):
    clean_rows = fake_run.samples[fake_run.samples["flagged"] == 0].iloc[:2]
    review.save_selection(fake_run.run, clean_rows["path"].tolist(), "2 images picked on the map")
    at = open_page("review", run_id=fake_run.run_id)
    assert at.radio(key="review_scope").value == "selection"
    at.radio(key="review_scope").set_value("all").run()
    assert at.query_params["show"] == "all"
    again = open_page("review", run_id=fake_run.run_id, params={"show": at.query_params["show"]})  # a refresh
    assert again.radio(key="review_scope").value == "all"
    assert len(card_indices(again)) == 24


def test_the_batch_bar_counts_the_ticked_cards_above_and_below_the_grid(fake_run):
    at = open_page("review", run_id=fake_run.run_id)
    chosen = fake_run.flagged.iloc[:2]
    for index in chosen["index"]:
        at.checkbox(key=f"sel_{index}").check()
    at.run()
    assert [m.value for m in at.markdown].count("**2 of 9 ticked**") == 2
    assert at.button(key="batch_keep_below").label == "Keep 2 selected"
    at.button(key="batch_keep_below").click().run()
    store = DecisionStore(fake_run.run.decisions)
    assert {store.get(p).action for p in chosen["path"]} == {"keep"}
    assert "**2 of 9 ticked**" not in [m.value for m in at.markdown]


def test_a_long_file_name_is_cut_in_the_middle_keeping_its_extension(fake_run):
    frame = fake_run.samples.copy()
    row = fake_run.flagged.iloc[0]
    long_path = "cat/holiday_photos_from_the_camera_roll_2024_0001.jpeg"
    frame.loc[frame["index"] == row["index"], "path"] = long_path
    frame.to_csv(fake_run.run.samples, index=False)
    at = open_page("review", run_id=fake_run.run_id)
    title = next(m for m in at.markdown if m.value.startswith("**holiday"))
    name = title.value.split("**")[1]
    assert name == "holiday_pho…24_0001.jpeg" and len(name) == 24
    assert title.help == long_path  # the whole path on hover

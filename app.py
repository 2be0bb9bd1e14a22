"""CLeaN: find and fix mislabeled images. Start with `streamlit run app.py` (or `make run`)."""

from __future__ import annotations

import streamlit as st

from ui import page

st.set_page_config(page_title="CLeaN — fix mislabeled images", page_icon=":material/cleaning_services:",
                   layout="wide")
pages = {path: st.Page(path, title=title, icon=icon, default=name == "data")
         for name, (path, title, icon) in page.PAGES.items()}
navigation = st.navigation(list(pages.values()))
intended = page.take_intended_page()  # a deep link that reached a page before the navigation existed
if intended in pages and pages[intended].url_path != navigation.url_path:
    st.switch_page(pages[intended], query_params=st.query_params.to_dict())
with st.sidebar:
    page.run_picker()
page.entered_through_app()
navigation.run()

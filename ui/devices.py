"""What the worker can train on, asked once per server process (`python -m engine devices --json`)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from engine.runs import jobs


@st.cache_resource(show_spinner="Looking for a GPU…")
def detected_devices() -> dict[str, Any]:
    """Cached for the life of the server: the hardware does not change while it runs."""
    return jobs.detect_devices()


def describe(info: dict[str, Any]) -> str:
    """'GPU: NVIDIA H100 (80 GB)' or 'CPU only' for the device selector's caption."""
    if info.get("cuda") and info.get("devices"):
        names = ", ".join(
            f"{d.get('name', 'GPU')}" + (f" ({float(d['memory_gb']):.0f} GB)" if d.get("memory_gb") else "")
            for d in info["devices"]
        )
        return f"GPU: {names}"
    return "CPU only" + (f" ({info['error']})" if info.get("error") else "")

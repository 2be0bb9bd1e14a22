"""The Streamlit side of the CLeaN app: page setup, cached readers, charts, review logic, uploads.

Nothing here imports torch: training runs in a separate `python -m engine` process.
"""

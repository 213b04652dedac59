"""The studio's pages, one Streamlit script each (run through ``st.navigation`` in ``fsl_app/app.py``).

Files starting with ``_`` are helpers the pages import (``from fsl_app.views import _shared``), not pages.
"""

"""The studio's entry script as shipped in the wheel (`fsl-app ui`).

Placeholder until the Streamlit app moves here from the top-level app.py and pages/ (views/); it only proves that the
packaged studio starts.
"""

import streamlit as st

st.set_page_config(page_title="fsl_app studio", page_icon=":material/photo_library:", layout="wide")
st.title("fsl_app studio")

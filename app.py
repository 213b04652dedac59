"""fsl_app studio (placeholder until the UI lands)."""
import streamlit as st

st.set_page_config(page_title="fsl_app", layout="wide")
st.title("fsl_app — few-shot image classification studio")

"""`streamlit run app.py` from a source checkout: runs the studio, fsl_app/app.py, on every rerun."""
import runpy; runpy.run_module("fsl_app.app", run_name="__main__")  # noqa: E401, E702

"""The capsim what-if dashboard (Streamlit).

Start it with ``capsim app`` (see :mod:`app.cli`). The page itself is
:mod:`app.dashboard`; everything it computes lives in small modules that do
not import Streamlit (so they are testable on their own):

* :mod:`app.fields` -- pydantic schema -> form-field descriptions;
* :mod:`app.setup` -- the dashboard's set-up, its scenario file (YAML) and the scenarios it expands to;
* :mod:`app.checks` -- validation with every problem attached to the field that caused it;
* :mod:`app.analysis` -- one simulation run reduced to the tables the page plots;
* :mod:`app.charts`, :mod:`app.export`, :mod:`app.tables` -- Altair charts, PNG/CSV bytes, the summary table.

The Streamlit-facing pieces are :mod:`app.widgets` (widgets generated from the
field descriptions), :mod:`app.runner` (cached runs with progress) and the page.
"""

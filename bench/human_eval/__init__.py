"""Human evaluation of a finished suite: blinded pairwise ratings in a local web page (`bench human-eval`).

draw.py draws images of every method's final adapter and of the base model from the same noise per prompt and
sample; schedule.py orders the pairs; db.py keeps pairs and votes in SQLite; app.py serves the page (page.py)
and its HTTP API; simulate.py casts votes through that API from a metric plus noise; analysis.py turns votes
into win rates, a Bradley-Terry ranking and agreements for `bench report`; command.py is the CLI command. The
user's guide is docs/human-eval.md. Only analysis.py is imported by the report,
and nothing here but draw.py and simulate.py imports torch.
"""

APP_VERSION = "1"
"""Version of the rating page and its vote format, written into every vote."""

FOLDER = "human_eval"
"""Everything of the human evaluation lives in SUITE/human_eval/: images/, images.json, votes.sqlite."""

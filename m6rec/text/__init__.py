"""Behaviour as text.

* :mod:`~m6rec.text.textify` — the profile, the history with relative time and ratings, and the
  candidate, written the M6-Rec way: the single source of the wording for training and serving alike
"""

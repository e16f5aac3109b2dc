"""The operators' and radiologists' web console (`llnm console`, and inside `llnm serve`).

`app.py` builds the Starlette application (pages, JSON API, actions) over the audit database; `auth.py`
holds the users file, roles, sessions and CSRF; `oidc.py` the optional single sign-on; `actions.py` the
operators' actions (requeue, re-send, force completion, discard), each recorded in the audit trail with who
did it; `studypage.py` what one study shows (result summary, key images, destinations' answers, patient
identity for the roles allowed); `quality.py` agreement and AUC/sensitivity/specificity from the feedback
and the outcomes (Prometheus and the console's plot); `corrections.py` outlines from a viewer's SEG or SR;
`cohort.py` the hospital cohort in the training layout (`llnm cohort export`); `server.py` runs it under
uvicorn. Starlette and Jinja2 are imported only here: the listener and the worker never load them.
"""
